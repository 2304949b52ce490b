// CoreDNS for the real node of tests/cluster (node.sh): the coredns command with only the plugins
// its Corefile uses (CoreDNS's own way to build a smaller server: a main that imports the plugins
// it wants and lists them in dnsserver.Directives, in the order of CoreDNS's plugin.cfg). No
// forward plugin: the cluster's DNS answers cluster.local and the reverse zones, and nothing else
// leaves the node.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order of CoreDNS's plugin.cfg, restricted to the plugins imported above.
var directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
