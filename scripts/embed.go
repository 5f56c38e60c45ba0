// Package scripts holds the node setup scripts of this directory as an
// fs.FS, for regproxy to serve on its proxy port (proxy.Config.Setup). It
// owns only the embedding: how the files are put together for serving is
// proxy's (setup.go), and what they do is theirs (see setup-lib.sh).
package scripts

import (
	"embed"
	"io/fs"
)

// The files served: the four setup scripts and the code they share.
//
//go:embed setup-lib.sh setup-docker.sh setup-containerd.sh setup-podman.sh setup-enroot.sh
var files embed.FS

// FS holds the setup scripts by file name (setup-docker.sh ...).
var FS fs.FS = files
