// Command route-agent is the kind cluster's pod network across nodes, the job kind's kindnetd
// does (kindnetd cannot be built here). On each node, in a loop, it:
//   - writes the bridge CNI conflist for the node's own pod range (spec.podCIDR);
//   - routes every other node's pod range via that node's InternalIP;
//   - masquerades pod traffic that leaves the cluster's pod range.
//
// Every step is idempotent, so the loop also repairs what a node restart or a hand edit undid.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	nodeName := flag.String("node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	clusterCIDRFlag := flag.String("cluster-cidr", "10.244.0.0/16", "the cluster's pod range (kind's podSubnet)")
	cniConf := flag.String("cni-conf", "/etc/cni/net.d/10-exo-bridge.conflist", "where the node's CNI config goes")
	interval := flag.Duration("interval", 10*time.Second, "time between two reconciles")
	flag.Parse()
	clusterCIDR, err := netip.ParsePrefix(*clusterCIDRFlag)
	if err != nil || *nodeName == "" {
		log.Fatalf("need -node (or $NODE_NAME) and a valid -cluster-cidr (got %q: %v)", *clusterCIDRFlag, err)
	}
	api, err := inClusterAPI()
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	agent := &agent{api: api, node: *nodeName, clusterCIDR: clusterCIDR, cniConf: *cniConf}
	for {
		if err := agent.reconcile(ctx); err != nil {
			log.Printf("reconcile: %v (retrying in %s)", err, *interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(*interval):
		}
	}
}

type agent struct {
	api         *apiClient
	node        string
	clusterCIDR netip.Prefix
	cniConf     string
	lastRoutes  string
}

func (a *agent) reconcile(ctx context.Context) error {
	body, err := a.api.get(ctx, "/api/v1/nodes")
	if err != nil {
		return err
	}
	nodes, err := parseNodes(body)
	if err != nil {
		return err
	}
	self, ok := findNode(nodes, a.node)
	if !ok {
		return fmt.Errorf("node %s has no pod range or IPv4 InternalIP yet", a.node)
	}
	if err := writeIfChanged(a.cniConf, bridgeConflist(self.PodCIDR)); err != nil {
		return err
	}
	desired := desiredRoutes(nodes, a.node)
	for _, r := range desired {
		if err := replaceRoute(r); err != nil {
			return err
		}
	}
	existing, err := gatewayRoutes()
	if err != nil {
		return err
	}
	for _, r := range staleRoutes(existing, desired, a.clusterCIDR) {
		log.Printf("removing the stale route %s", r)
		if err := deleteRoute(r); err != nil {
			return err
		}
	}
	if err := ensureNATRule("POSTROUTING", masqueradeRule(self.PodCIDR, a.clusterCIDR)); err != nil {
		return err
	}
	// Log the routes only when they change, not every loop.
	if summary := fmt.Sprint(self.PodCIDR, desired); summary != a.lastRoutes {
		log.Printf("node %s: pods in %s; routes %v", a.node, self.PodCIDR, desired)
		a.lastRoutes = summary
	}
	return nil
}

// writeIfChanged replaces path with content atomically (the container runtime may read it at any
// moment), and only when it differs.
func writeIfChanged(path string, content []byte) error {
	if current, err := os.ReadFile(path); err == nil && bytes.Equal(current, content) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".route-agent-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	log.Printf("writing %s", path)
	return os.Rename(tmp.Name(), path)
}
