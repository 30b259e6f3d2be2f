package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/commitlog"
)

// fromForms names every form a start position (--from, groups reset --to)
// takes, for help texts and errors. The first part is the wording the
// errors have always used.
const fromForms = "earliest, latest, an offset, or an RFC 3339 time (2026-11-23T10:00:00Z); " +
	"also -N (N before the end of each partition, not before its start: -10) " +
	"or a duration ago (1h, 30m, 1h30m)"

// fromFlagHelp is the one-line help of a flag taking a start position.
const fromFlagHelp = "where to start: earliest, latest, an offset (42), -N (N before each partition's end), an RFC 3339 time, or a duration ago (1h)"

type startKind int

const (
	startEarliest startKind = iota
	startLatest
	startOffset   // an absolute offset
	startRelative // n before the end of each partition
	startTime     // an RFC 3339 time, or a duration before now
)

// startPoint is a parsed start position. It is parsed once, before the
// log is opened, and resolved to an offset per partition by offset.
type startPoint struct {
	kind startKind
	n    uint64    // startOffset: the offset; startRelative: how many before the end
	time time.Time // startTime
}

// parseFrom parses a start position, the same for consume, tail, replay
// and groups reset: earliest (or empty), latest, an offset ("42"), a
// relative offset ("-10": ten before the end of each partition, clamped at
// its start), an RFC 3339 time, or a duration ("1h": an hour before now).
// flag names the flag in errors.
func parseFrom(flag, s string, now time.Time) (startPoint, error) {
	switch s {
	case "earliest", "":
		return startPoint{kind: startEarliest}, nil
	case "latest":
		return startPoint{kind: startLatest}, nil
	}
	if off, err := strconv.ParseUint(s, 10, 64); err == nil {
		return startPoint{kind: startOffset, n: off}, nil
	}
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		if n, err := strconv.ParseUint(rest, 10, 64); err == nil {
			return startPoint{kind: startRelative, n: n}, nil
		}
	}
	if t, ago, ok := timeOrAgo(s, now); ok {
		if ago < 0 {
			return startPoint{}, usageError{fmt.Errorf("%s %q: a duration counts back from now, so it cannot be negative (want %s)", flag, s, fromForms)}
		}
		return startPoint{kind: startTime, time: t}, nil
	}
	return startPoint{}, usageError{fmt.Errorf("%s %q: want %s", flag, s, fromForms)}
}

// timeOrAgo parses an RFC 3339 time, or a duration before now (ago is
// that duration, which the caller may refuse when negative; zero for a
// time). ok is false if s is neither.
func timeOrAgo(s string, now time.Time) (t time.Time, ago time.Duration, ok bool) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, 0, true
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), d, true
	}
	return time.Time{}, 0, false
}

// since returns the time a time or duration start position names.
func (s startPoint) since() (time.Time, bool) {
	return s.time, s.kind == startTime
}

// offset resolves the start position to an offset of one partition.
func (s startPoint) offset(l *commitlog.Log, topic string, p int32) (uint64, error) {
	start, end, err := l.Bounds(topic, p)
	if err != nil {
		return 0, err
	}
	switch s.kind {
	case startEarliest:
		return start, nil
	case startLatest:
		return end, nil
	case startOffset:
		return s.n, nil
	case startRelative:
		if end-start < s.n {
			return start, nil
		}
		return end - s.n, nil
	default:
		return l.OffsetForTime(topic, p, s.time)
	}
}
