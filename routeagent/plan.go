package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
)

// node is what the agent needs of a Node object: the pod range kube-controller-manager gave it
// and the address other nodes reach it on.
type node struct {
	Name       string
	PodCIDR    netip.Prefix
	InternalIP netip.Addr
}

// route sends a pod range to the node that holds it.
type route struct {
	Dst netip.Prefix
	Via netip.Addr
}

func (r route) String() string { return r.Dst.String() + " via " + r.Via.String() }

// nodeList is the part of a v1 NodeList the agent reads.
type nodeList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			PodCIDR string `json:"podCIDR"`
		} `json:"spec"`
		Status struct {
			Addresses []struct {
				Type    string `json:"type"`
				Address string `json:"address"`
			} `json:"addresses"`
		} `json:"status"`
	} `json:"items"`
}

// parseNodes reads a NodeList. A node with no pod range yet (just joined) or no IPv4 InternalIP
// is left out: there is nothing to route to it until it has both.
func parseNodes(body []byte) ([]node, error) {
	var list nodeList
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("decode NodeList: %w", err)
	}
	var nodes []node
	for _, item := range list.Items {
		cidr, err := netip.ParsePrefix(item.Spec.PodCIDR)
		if err != nil || !cidr.Addr().Is4() {
			continue
		}
		for _, address := range item.Status.Addresses {
			ip, err := netip.ParseAddr(address.Address)
			if address.Type == "InternalIP" && err == nil && ip.Is4() {
				nodes = append(nodes, node{Name: item.Metadata.Name, PodCIDR: cidr.Masked(), InternalIP: ip})
				break
			}
		}
	}
	return nodes, nil
}

// findNode returns the node called name.
func findNode(nodes []node, name string) (node, bool) {
	for _, n := range nodes {
		if n.Name == name {
			return n, true
		}
	}
	return node{}, false
}

// desiredRoutes: every other node's pod range via that node's address, sorted for stable logs.
// The node's own range needs no route: the bridge holds it.
func desiredRoutes(nodes []node, self string) []route {
	var routes []route
	for _, n := range nodes {
		if n.Name != self {
			routes = append(routes, route{Dst: n.PodCIDR, Via: n.InternalIP})
		}
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Dst.String() < routes[j].Dst.String() })
	return routes
}

// staleRoutes: routes through a gateway into the cluster's pod range that no node asks for any
// more (a node deleted, or given a new address). Routes outside the pod range, and the bridge's
// own link route (no gateway), are not the agent's and are never touched.
func staleRoutes(existing, desired []route, clusterCIDR netip.Prefix) []route {
	wanted := make(map[route]bool, len(desired))
	for _, r := range desired {
		wanted[r] = true
	}
	var stale []route
	for _, r := range existing {
		inside := clusterCIDR.Contains(r.Dst.Addr()) && r.Dst.Bits() >= clusterCIDR.Bits()
		if inside && r.Via.IsValid() && !wanted[r] {
			stale = append(stale, r)
		}
	}
	return stale
}

// bridgeConflist is the CNI config for a node's pods: the bridge plugin hands out addresses from
// the node's own pod range only, so no two nodes give out the same address. Masquerading is the
// agent's (masqueradeRule): the bridge plugin's ipMasq would also rewrite pod-to-pod traffic that
// crosses nodes, hiding the sender's pod IP.
func bridgeConflist(podCIDR netip.Prefix) []byte {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "exo-bridge",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      "cni0",
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podCIDR.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	body, _ := json.MarshalIndent(conf, "", "  ") // only maps of strings and bools: cannot fail
	return append(body, '\n')
}

// masqueradeRule: the nat POSTROUTING rule (iptables arguments) that gives the node's address to
// pod traffic leaving the cluster's pod range, so that answers from outside find their way back;
// traffic between pods keeps its pod source address.
func masqueradeRule(podCIDR, clusterCIDR netip.Prefix) []string {
	return []string{
		"-s", podCIDR.String(), "!", "-d", clusterCIDR.String(),
		"-m", "comment", "--comment", "exo-route-agent: pod traffic leaving the cluster",
		"-j", "MASQUERADE",
	}
}
