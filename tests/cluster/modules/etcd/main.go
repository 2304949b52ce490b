// Command etcd is etcd's server, built from the pinned go.etcd.io/etcd/server/v3 module
// exactly as etcd's own server/main.go builds it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
