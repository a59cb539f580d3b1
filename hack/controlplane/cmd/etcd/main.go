// Command etcd is upstream etcd's server entry point, built inside the control-plane wrapper
// module so that its version is the one k8s.io/kubernetes was tested with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
