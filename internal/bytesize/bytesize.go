// Package bytesize writes byte counts for people, in binary units, the one
// way the CLI, the log and the status page all show them.
package bytesize

import "fmt"

// Format writes n bytes in binary units with one decimal: "512 B",
// "1.5 GiB". A negative n (a difference) gets a minus sign.
func Format(n int64) string {
	if n < 0 {
		return "-" + Format(-max(n, -1<<62))
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
