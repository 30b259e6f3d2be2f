package admin

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// StartForms names every form a start position takes, for help texts and
// errors.
const StartForms = "earliest, latest, an offset, or an RFC 3339 time (2026-11-23T10:00:00Z); " +
	"also -N (N before the end of each partition, not before its start: -10) " +
	"or a duration ago (1h, 30m, 1h30m)"

// StartKind is the form of a start position.
type StartKind int

// The forms of a start position.
const (
	StartEarliest StartKind = iota
	StartLatest
	StartOffset   // an absolute offset
	StartRelative // N before the end of each partition
	StartTime     // an RFC 3339 time, or a duration before now
)

// Start is a parsed start position: where a browse, a replay or a group
// reset begins in each partition.
type Start struct {
	Kind StartKind
	N    uint64    // StartOffset: the offset; StartRelative: how many before the end
	Time time.Time // StartTime
}

// ParseStart parses a start position: earliest (or empty), latest, an
// offset ("42"), a relative offset ("-10": ten before the end of each
// partition, clamped at its start), an RFC 3339 time, or a duration ("1h":
// an hour before now). Errors wrap ferry.ErrInvalidArgument.
func ParseStart(s string, now time.Time) (Start, error) {
	switch s {
	case "earliest", "":
		return Start{Kind: StartEarliest}, nil
	case "latest":
		return Start{Kind: StartLatest}, nil
	}
	if off, err := strconv.ParseUint(s, 10, 64); err == nil {
		return Start{Kind: StartOffset, N: off}, nil
	}
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		if n, err := strconv.ParseUint(rest, 10, 64); err == nil {
			return Start{Kind: StartRelative, N: n}, nil
		}
	}
	if t, ago, ok := TimeOrAgo(s, now); ok {
		if ago < 0 {
			return Start{}, fmt.Errorf("%q: a duration counts back from now, so it cannot be negative (want %s): %w", s, StartForms, ferry.ErrInvalidArgument)
		}
		return Start{Kind: StartTime, Time: t}, nil
	}
	return Start{}, fmt.Errorf("%q: want %s: %w", s, StartForms, ferry.ErrInvalidArgument)
}

// TimeOrAgo parses an RFC 3339 time, or a duration before now (ago is that
// duration, which the caller may refuse when negative; zero for a time).
// ok is false if s is neither.
func TimeOrAgo(s string, now time.Time) (t time.Time, ago time.Duration, ok bool) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, 0, true
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), d, true
	}
	return time.Time{}, 0, false
}

// Positions is what resolving a start position reads: a backend.Backend
// has both.
type Positions interface {
	Bounds(ctx context.Context, tp backend.TopicPartition) (start, end uint64, err error)
	OffsetForTime(ctx context.Context, tp backend.TopicPartition, t time.Time) (uint64, error)
}

// Resolve returns the offset of tp the start position names.
func (s Start) Resolve(ctx context.Context, p Positions, tp backend.TopicPartition) (uint64, error) {
	start, end, err := p.Bounds(ctx, tp)
	if err != nil {
		return 0, err
	}
	switch s.Kind {
	case StartEarliest:
		return start, nil
	case StartLatest:
		return end, nil
	case StartOffset:
		return s.N, nil
	case StartRelative:
		if end-start < s.N {
			return start, nil
		}
		return end - s.N, nil
	default:
		return p.OffsetForTime(ctx, tp, s.Time)
	}
}
