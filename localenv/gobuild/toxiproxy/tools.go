//go:build tools

// The main packages this module builds (a build-tag-guarded import keeps them in go.mod).
package tools

import (
	_ "github.com/Shopify/toxiproxy/v2/cmd/cli"
	_ "github.com/Shopify/toxiproxy/v2/cmd/server"
)
