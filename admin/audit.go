package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// AuditRecord is one entry of the audit log: a CloudEvents 1.0 event in
// its JSON form (structured mode), whose data says who did what to which
// target, and how it ended.
type AuditRecord struct {
	SpecVersion     string    `json:"specversion"` // "1.0"
	ID              string    `json:"id"`          // the record's own ID
	Source          string    `json:"source"`      // "ferry-admin"
	Type            string    `json:"type"`        // dev.ferry.admin.VERB
	Time            time.Time `json:"time"`
	Subject         string    `json:"subject"` // the target
	DataContentType string    `json:"datacontenttype"`
	Data            AuditData `json:"data"`
}

// AuditData is what an audit record says.
type AuditData struct {
	// Actor is the token name or the client certificate's subject
	// ("anonymous" without authentication).
	Actor string `json:"actor"`
	// Auth is how the actor authenticated: token, mtls, console (a
	// token kept in the console's session cookie) or none.
	Auth   string `json:"auth"`
	Verb   string `json:"verb"`
	Method string `json:"method"`
	Path   string `json:"path"`
	Target string `json:"target"`
	// Filter is the DLQ filter of a redrive or purge.
	Filter *Filter `json:"filter,omitempty"`
	// Result is ok, denied (authorization), or failed (the operation).
	Result string `json:"result"`
	Status int    `json:"status"`
	// Counts say what the operation did ("redriven 41 of 41").
	Counts    string `json:"counts,omitempty"`
	Error     string `json:"error,omitempty"`
	RequestID string `json:"request_id"`
}

// Audit results.
const (
	AuditOK     = "ok"
	AuditDenied = "denied"
	AuditFailed = "failed"
)

// AuditQuery selects audit records. Empty fields match everything.
type AuditQuery struct {
	Actor  string `json:"actor,omitempty"`
	Verb   string `json:"verb,omitempty"`
	Result string `json:"result,omitempty"`
	// Since, an RFC 3339 time or a duration ago, leaves out older records.
	Since string `json:"since,omitempty"`
	// Limit keeps the newest (0: DefaultLimit).
	Limit int `json:"limit,omitempty"`
}

// Record appends rec to the audit log, creating its topic (one partition,
// so that the log has one order) if needed.
func (s *Service) Record(ctx context.Context, rec AuditRecord) error {
	id, err := ferry.ParseID(rec.ID)
	if err != nil {
		return fmt.Errorf("audit record id %q: %w", rec.ID, err)
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := s.b.EnsureTopic(ctx, s.audit, 1); err != nil {
		return fmt.Errorf("audit topic %s: %w", s.audit, err)
	}
	m := &ferry.Message{ID: id, Topic: s.audit, Key: []byte(rec.Data.Actor), Payload: body, Time: rec.Time,
		Headers: []ferry.Header{{Key: "content-type", Value: []byte("application/cloudevents+json")}}}
	if err := s.b.Publish(ctx, m); err != nil {
		return fmt.Errorf("audit topic %s: %w", s.audit, err)
	}
	return nil
}

// NewAuditRecord returns a record of verb on target by actor, with a new
// ID and the Service's time.
func (s *Service) NewAuditRecord(verb, target string, data AuditData) AuditRecord {
	data.Verb, data.Target = verb, target
	return AuditRecord{SpecVersion: "1.0", ID: ferry.NewID().String(), Source: "ferry-admin", Type: "dev.ferry.admin." + verb,
		Time: s.now().UTC(), Subject: target, DataContentType: "application/json", Data: data}
}

// AuditLog implements API.
func (s *Service) AuditLog(ctx context.Context, q AuditQuery) ([]AuditRecord, error) {
	n, err := limit(q.Limit)
	if err != nil {
		return nil, err
	}
	var since time.Time
	if q.Since != "" {
		t, ago, ok := TimeOrAgo(q.Since, s.now())
		if !ok || ago < 0 {
			return nil, fmt.Errorf("audit since %q: want an RFC 3339 time or a duration ago (1h): %w", q.Since, ferry.ErrInvalidArgument)
		}
		since = t
	}
	switch q.Result {
	case "", AuditOK, AuditDenied, AuditFailed:
	default:
		return nil, fmt.Errorf("audit result %q: want %s, %s or %s: %w", q.Result, AuditOK, AuditDenied, AuditFailed, ferry.ErrInvalidArgument)
	}
	out := []AuditRecord{}
	if _, err := s.b.Partitions(ctx, s.audit); errors.Is(err, ferry.ErrTopicNotFound) {
		return out, nil // nothing audited yet
	} else if err != nil {
		return nil, err
	}
	tp := backend.TopicPartition{Topic: s.audit}
	from := uint64(0)
	if !since.IsZero() {
		// A record is appended just after it is made: its message's time
		// is not before its own (a minute's margin for clock steps).
		if from, err = s.b.OffsetForTime(ctx, tp, since.Add(-time.Minute)); err != nil {
			return nil, err
		}
	}
	err = s.scan(ctx, tp, from, func(m *ferry.Message, _ uint64) bool {
		var rec AuditRecord
		if json.Unmarshal(m.Payload, &rec) != nil {
			return true // not ours: the topic is written only by Record
		}
		if q.Actor != "" && rec.Data.Actor != q.Actor || q.Verb != "" && rec.Data.Verb != q.Verb ||
			q.Result != "" && rec.Data.Result != q.Result || rec.Time.Before(since) {
			return true
		}
		out = append(out, rec)
		if len(out) == 2*n {
			// Keep the newest n (amortized: one copy per n records).
			out = append(out[:0], out[n:]...)
		}
		return true
	})
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out, err
}
