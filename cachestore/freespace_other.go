//go:build !(linux || darwin || freebsd)

package cachestore

import "errors"

// FreeSpace is not implemented on this system: --min-free-space then has no
// effect.
func (d *Disk) FreeSpace() (avail, total int64, err error) {
	return 0, 0, errors.New("cachestore: free space unknown on this system")
}
