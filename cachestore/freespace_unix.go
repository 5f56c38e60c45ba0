//go:build linux || darwin || freebsd

package cachestore

import (
	"fmt"
	"syscall"
)

// FreeSpace reports the bytes available to regproxy on the filesystem that
// holds the store, and that filesystem's size (statfs(2)).
func (d *Disk) FreeSpace() (avail, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.root, &st); err != nil {
		return 0, 0, fmt.Errorf("cachestore: statfs %s: %w", d.root, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}
