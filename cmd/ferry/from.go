package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/commitlog"
)

// fromForms names every form a start position (--from, groups reset --to)
// takes, for help texts and errors.
const fromForms = admin.StartForms

// fromFlagHelp is the one-line help of a flag taking a start position.
const fromFlagHelp = "where to start: earliest, latest, an offset (42), -N (N before each partition's end), an RFC 3339 time, or a duration ago (1h)"

// startPoint is a parsed start position. It is parsed once, before the
// log is opened, and resolved to an offset per partition by offset.
type startPoint = admin.Start

// parseFrom parses a start position, the same for consume, tail, replay
// and groups reset (admin.ParseStart). flag names the flag in errors.
func parseFrom(flag, s string, now time.Time) (startPoint, error) {
	p, err := admin.ParseStart(s, now)
	if err != nil {
		return p, usageError{fmt.Errorf("%s %w", flag, unwrapInvalid(err))}
	}
	return p, nil
}

// unwrapInvalid drops the ": invalid argument" that admin's errors end
// with: the exit code says it already.
func unwrapInvalid(err error) error {
	if u := errors.Unwrap(err); u != nil {
		if msg, ok := strings.CutSuffix(err.Error(), ": "+u.Error()); ok {
			return errors.New(msg)
		}
	}
	return err
}

// timeOrAgo parses an RFC 3339 time, or a duration before now.
func timeOrAgo(s string, now time.Time) (time.Time, time.Duration, bool) {
	return admin.TimeOrAgo(s, now)
}

// logPositions reads a log's bounds for admin.Start.Resolve.
type logPositions struct{ l *commitlog.Log }

func (p logPositions) Bounds(_ context.Context, tp backend.TopicPartition) (uint64, uint64, error) {
	return p.l.Bounds(tp.Topic, tp.Partition)
}

func (p logPositions) OffsetForTime(_ context.Context, tp backend.TopicPartition, t time.Time) (uint64, error) {
	return p.l.OffsetForTime(tp.Topic, tp.Partition, t)
}

// offsetIn resolves the start position to an offset of one partition of l.
func offsetIn(s startPoint, l *commitlog.Log, topic string, p int32) (uint64, error) {
	return s.Resolve(context.Background(), logPositions{l}, backend.TopicPartition{Topic: topic, Partition: p})
}

// startTime returns the time a time or duration start position names.
func startTime(s startPoint) (time.Time, bool) {
	return s.Time, s.Kind == admin.StartTime
}
