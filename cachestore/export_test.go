package cachestore

// DiskPath exposes the file a Disk computes for key, so that external tests
// can check the layout without writing.
func DiskPath(d *Disk, key string) (string, error) { return d.path(key) }
