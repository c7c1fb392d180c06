package main

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
)

func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr     { return netip.MustParseAddr(s) }

// A NodeList as the API server sends it (trimmed): a control plane, a worker, a node that has
// just joined (no podCIDR yet) and a node known only by an IPv6 address.
const nodeListJSON = `{"kind": "NodeList", "items": [
  {"metadata": {"name": "cp"}, "spec": {"podCIDR": "10.244.0.0/24"},
   "status": {"addresses": [{"type": "Hostname", "address": "cp"}, {"type": "InternalIP", "address": "172.18.0.3"}]}},
  {"metadata": {"name": "w1"}, "spec": {"podCIDR": "10.244.1.0/24"},
   "status": {"addresses": [{"type": "InternalIP", "address": "fc00::2"}, {"type": "InternalIP", "address": "172.18.0.2"}]}},
  {"metadata": {"name": "joining"}, "spec": {},
   "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.4"}]}},
  {"metadata": {"name": "v6only"}, "spec": {"podCIDR": "10.244.3.0/24"},
   "status": {"addresses": [{"type": "InternalIP", "address": "fc00::5"}]}}
]}`

func TestParseNodesKeepsOnlyNodesWithAPodRangeAndAnIPv4Address(t *testing.T) {
	nodes, err := parseNodes([]byte(nodeListJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := []node{
		{Name: "cp", PodCIDR: prefix("10.244.0.0/24"), InternalIP: addr("172.18.0.3")},
		{Name: "w1", PodCIDR: prefix("10.244.1.0/24"), InternalIP: addr("172.18.0.2")},
	}
	if !reflect.DeepEqual(nodes, want) {
		t.Fatalf("got %+v, want %+v", nodes, want)
	}
}

func TestParseNodesRejectsABodyThatIsNotANodeList(t *testing.T) {
	if _, err := parseNodes([]byte(`<html>502</html>`)); err == nil {
		t.Fatal("want an error for a body that is not JSON")
	}
}

func TestDesiredRoutesSendEveryOtherNodesRangeToThatNode(t *testing.T) {
	nodes := []node{
		{Name: "w2", PodCIDR: prefix("10.244.2.0/24"), InternalIP: addr("172.18.0.4")},
		{Name: "cp", PodCIDR: prefix("10.244.0.0/24"), InternalIP: addr("172.18.0.3")},
		{Name: "w1", PodCIDR: prefix("10.244.1.0/24"), InternalIP: addr("172.18.0.2")},
	}
	cases := []struct {
		self string
		want []route
	}{
		{"cp", []route{
			{prefix("10.244.1.0/24"), addr("172.18.0.2")},
			{prefix("10.244.2.0/24"), addr("172.18.0.4")},
		}},
		{"w1", []route{
			{prefix("10.244.0.0/24"), addr("172.18.0.3")},
			{prefix("10.244.2.0/24"), addr("172.18.0.4")},
		}},
	}
	for _, c := range cases {
		if got := desiredRoutes(nodes, c.self); !reflect.DeepEqual(got, c.want) {
			t.Errorf("on %s: got %v, want %v", c.self, got, c.want)
		}
	}
}

func TestDesiredRoutesOnASingleNodeClusterAreNone(t *testing.T) {
	nodes := []node{{Name: "cp", PodCIDR: prefix("10.244.0.0/24"), InternalIP: addr("172.18.0.3")}}
	if got := desiredRoutes(nodes, "cp"); len(got) != 0 {
		t.Fatalf("got %v, want no routes", got)
	}
}

func TestStaleRoutesAreOnlyTheAgentsOwnThatNoNodeWants(t *testing.T) {
	cluster := prefix("10.244.0.0/16")
	desired := []route{{prefix("10.244.1.0/24"), addr("172.18.0.2")}}
	cases := []struct {
		name     string
		existing route
		stale    bool
	}{
		{"wanted", route{prefix("10.244.1.0/24"), addr("172.18.0.2")}, false},
		{"deleted node", route{prefix("10.244.2.0/24"), addr("172.18.0.4")}, true},
		{"node with a new address", route{prefix("10.244.1.0/24"), addr("172.18.0.9")}, true},
		{"the bridge's link route (no gateway)", route{Dst: prefix("10.244.0.0/24")}, false},
		{"outside the pod range", route{prefix("192.168.0.0/24"), addr("172.18.0.1")}, false},
		{"wider than the pod range", route{prefix("10.0.0.0/8"), addr("172.18.0.1")}, false},
	}
	for _, c := range cases {
		got := staleRoutes([]route{c.existing}, desired, cluster)
		if (len(got) == 1) != c.stale {
			t.Errorf("%s: stale = %v, want %v", c.name, got, c.stale)
		}
	}
}

func TestBridgeConflistHandsOutOnlyTheNodesRangeAndLeavesMasqueradeToTheAgent(t *testing.T) {
	var conf struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type   string `json:"type"`
			IPMasq bool   `json:"ipMasq"`
			IPAM   struct {
				Ranges [][]map[string]string `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(bridgeConflist(prefix("10.244.1.0/24")), &conf); err != nil {
		t.Fatal(err)
	}
	bridge := conf.Plugins[0]
	if bridge.Type != "bridge" || bridge.IPMasq {
		t.Fatalf("first plugin: got type %q ipMasq %v, want bridge without ipMasq", bridge.Type, bridge.IPMasq)
	}
	if got := bridge.IPAM.Ranges; len(got) != 1 || len(got[0]) != 1 || got[0][0]["subnet"] != "10.244.1.0/24" {
		t.Fatalf("ranges: got %v, want only 10.244.1.0/24", got)
	}
	if conf.Plugins[1].Type != "portmap" {
		t.Fatalf("second plugin: got %q, want portmap (hostPort)", conf.Plugins[1].Type)
	}
}

func TestBridgeConflistIsTheSameBytesEveryTime(t *testing.T) {
	// writeIfChanged compares bytes: a map order that changed would rewrite the file each loop.
	first := bridgeConflist(prefix("10.244.1.0/24"))
	for range 20 {
		if string(bridgeConflist(prefix("10.244.1.0/24"))) != string(first) {
			t.Fatal("the conflist differs between two calls")
		}
	}
}

func TestMasqueradeRuleSparesTrafficBetweenPods(t *testing.T) {
	got := masqueradeRule(prefix("10.244.1.0/24"), prefix("10.244.0.0/16"))
	want := []string{
		"-s", "10.244.1.0/24", "!", "-d", "10.244.0.0/16",
		"-m", "comment", "--comment", "exo-route-agent: pod traffic leaving the cluster",
		"-j", "MASQUERADE",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
