//go:build tools

// The main packages this module builds (a build-tag-guarded import keeps them in go.mod).
package tools

import (
	_ "sigs.k8s.io/apiserver-network-proxy/cmd/agent"
	_ "sigs.k8s.io/apiserver-network-proxy/cmd/server"
)
