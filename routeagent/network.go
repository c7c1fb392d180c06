package main

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"

	"github.com/vishvananda/netlink"
)

func replaceRoute(r route) error {
	if err := netlink.RouteReplace(netlinkRoute(r)); err != nil {
		return fmt.Errorf("ip route replace %s: %w", r, err)
	}
	return nil
}

func deleteRoute(r route) error {
	if err := netlink.RouteDel(netlinkRoute(r)); err != nil {
		return fmt.Errorf("ip route del %s: %w", r, err)
	}
	return nil
}

func netlinkRoute(r route) *netlink.Route {
	return &netlink.Route{
		Dst: &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)},
		Gw:  r.Via.AsSlice(),
	}
}

// gatewayRoutes lists the main table's IPv4 routes that go through a gateway.
func gatewayRoutes() ([]route, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []route
	for _, r := range routes {
		if r.Dst == nil || r.Gw == nil {
			continue
		}
		dst, ok1 := netip.AddrFromSlice(r.Dst.IP.To4())
		via, ok2 := netip.AddrFromSlice(r.Gw.To4())
		bits, _ := r.Dst.Mask.Size()
		if ok1 && ok2 {
			out = append(out, route{Dst: netip.PrefixFrom(dst, bits), Via: via})
		}
	}
	return out, nil
}

// ensureNATRule appends rule to the nat table's chain unless it is there already (-C checks).
// iptables is the nft backend in the agent's image, as on the node, so both see one rule set.
func ensureNATRule(chain string, rule []string) error {
	check := append([]string{"-w", "-t", "nat", "-C", chain}, rule...)
	if exec.Command("iptables", check...).Run() == nil {
		return nil
	}
	add := append([]string{"-w", "-t", "nat", "-A", chain}, rule...)
	if out, err := exec.Command("iptables", add...).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables %v: %v: %s", add, err, out)
	}
	return nil
}
