//go:build tools

// The main package this module builds (a build-tag-guarded import keeps it in go.mod).
package tools

import (
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
