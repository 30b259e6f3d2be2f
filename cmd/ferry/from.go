package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/ferrymq/ferry/commitlog"
)

// parseStart turns --from into a starting offset for a partition:
// earliest, latest, an offset, or an RFC 3339 time.
func parseStart(l *commitlog.Log, topic string, p int32, from string) (uint64, error) {
	start, end, err := l.Bounds(topic, p)
	if err != nil {
		return 0, err
	}
	switch from {
	case "earliest", "":
		return start, nil
	case "latest":
		return end, nil
	}
	if off, err := strconv.ParseUint(from, 10, 64); err == nil {
		return off, nil
	}
	if t, err := time.Parse(time.RFC3339, from); err == nil {
		return l.OffsetForTime(topic, p, t)
	}
	return 0, usageError{fmt.Errorf("--from %q: want earliest, latest, an offset, or an RFC 3339 time like 2026-11-23T10:00:00Z", from)}
}
