package ca

import (
	"io/fs"
	"os"
	"path/filepath"
)

// A ModeWarning names a file of a CA directory whose permissions let other
// users near the private key.
type ModeWarning struct {
	Path string
	Mode fs.FileMode // permission bits only
	Want fs.FileMode // what LoadOrCreate creates
}

// CheckModes looks at a directory LoadOrCreate manages and reports the key
// if group or others may read or write it, and the directory if its mode is
// not 0700 (others could then swap the files, or read a key whose own mode
// slipped). Files that are missing or cannot be examined are not reported:
// loading them fails with a better error.
func CheckModes(dir string) []ModeWarning {
	var warnings []ModeWarning
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm() != 0o700 {
		warnings = append(warnings, ModeWarning{Path: dir, Mode: fi.Mode().Perm(), Want: 0o700})
	}
	key := filepath.Join(dir, keyName)
	if fi, err := os.Stat(key); err == nil && fi.Mode().Perm()&0o066 != 0 {
		warnings = append(warnings, ModeWarning{Path: key, Mode: fi.Mode().Perm(), Want: 0o600})
	}
	return warnings
}
