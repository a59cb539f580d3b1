//go:build tools

// Package tools pins the upstream main packages built by hack/build-node.sh: a kubelet, and the
// scheduler and controller manager that place a chart's Deployment and DaemonSet pods on it.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
