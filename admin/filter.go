package admin

import (
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// Filter selects DLQ entries, as the API takes it: in a redrive or purge
// body, or as the query of a DLQ list (class=...&key=...). Empty fields
// match everything.
type Filter struct {
	Class  string `json:"class,omitempty"`  // failure class: see Classes
	Key    string `json:"key,omitempty"`    // the original message's key (text)
	Source string `json:"source,omitempty"` // the topic the message came from
	// Since and Until bound the last failure: an RFC 3339 time or a
	// duration ago (1h).
	Since string `json:"since,omitempty"`
	Until string `json:"until,omitempty"`
	// State is dead, requested, redriven or purged (list: dead and
	// requested when empty).
	State string   `json:"state,omitempty"`
	IDs   []string `json:"ids,omitempty"` // original message IDs
}

// Classes are the failure classes a DLQ entry can have.
var Classes = []string{string(retry.ClassTransient), string(retry.ClassPermanent), string(retry.ClassDecode), string(retry.ClassTimeout),
	string(retry.ClassPanic), string(dlq.ClassParked), string(dlq.ClassScheduled)}

// States are the states a DLQ entry can be in.
var States = []string{dlq.StateDead, dlq.StateRequested, dlq.StateRedriven, dlq.StatePurged}

// filterParams are the query parameters of a filter, in Filter's order.
var filterParams = []string{"class", "key", "source", "since", "until", "state", "id"}

// maxFilterIDs bounds the IDs of one filter.
const maxFilterIDs = 10000

// ParseFilter reads a filter from query parameters: class, key, source,
// since, until, state (each at most once) and id (repeated). extra names
// other parameters the caller accepts (limit, ...); anything else is an
// error, so that a misspelt filter never selects everything. Errors wrap
// ferry.ErrInvalidArgument.
func ParseFilter(q url.Values, extra ...string) (Filter, error) {
	var f Filter
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		vs := q[name]
		if slices.Contains(extra, name) {
			continue
		}
		if !slices.Contains(filterParams, name) {
			return f, fmt.Errorf("unknown filter parameter %q: want %s: %w", name, strings.Join(append(slices.Clone(filterParams), extra...), ", "), ferry.ErrInvalidArgument)
		}
		if name == "id" {
			f.IDs = append(f.IDs, vs...)
			continue
		}
		if len(vs) != 1 {
			return f, fmt.Errorf("filter parameter %q given %d times: at most once: %w", name, len(vs), ferry.ErrInvalidArgument)
		}
		v := vs[0]
		switch name {
		case "class":
			f.Class = v
		case "key":
			f.Key = v
		case "source":
			f.Source = v
		case "since":
			f.Since = v
		case "until":
			f.Until = v
		case "state":
			f.State = v
		}
	}
	if _, err := f.Parse(time.Now()); err != nil {
		return Filter{}, err
	}
	return f, nil
}

// Query returns the filter as query parameters (ParseFilter's input).
func (f Filter) Query() url.Values {
	q := url.Values{}
	for name, v := range map[string]string{"class": f.Class, "key": f.Key, "source": f.Source, "since": f.Since, "until": f.Until, "state": f.State} {
		if v != "" {
			q.Set(name, v)
		}
	}
	for _, id := range f.IDs {
		q.Add("id", id)
	}
	return q
}

// Parse checks the filter and returns the dlq.Filter it means; durations
// count back from now. Errors wrap ferry.ErrInvalidArgument and say what
// is allowed.
func (f Filter) Parse(now time.Time) (dlq.Filter, error) {
	var out dlq.Filter
	if f.Class != "" && !slices.Contains(Classes, f.Class) {
		return out, fmt.Errorf("filter class %q: want one of %s: %w", f.Class, strings.Join(Classes, ", "), ferry.ErrInvalidArgument)
	}
	out.Class = retry.Class(f.Class)
	if f.State != "" && !slices.Contains(States, f.State) {
		return out, fmt.Errorf("filter state %q: want one of %s: %w", f.State, strings.Join(States, ", "), ferry.ErrInvalidArgument)
	}
	out.State = f.State
	if f.Key != "" {
		out.Key = []byte(f.Key)
	}
	out.SourceTopic = f.Source
	for name, v := range map[string]string{"since": f.Since, "until": f.Until} {
		if v == "" {
			continue
		}
		t, ago, ok := TimeOrAgo(v, now)
		if !ok || ago < 0 {
			return out, fmt.Errorf("filter %s %q: want an RFC 3339 time (2026-11-23T10:00:00Z) or a duration ago (1h): %w", name, v, ferry.ErrInvalidArgument)
		}
		if name == "since" {
			out.Since = t
		} else {
			out.Until = t
		}
	}
	if !out.Since.IsZero() && !out.Until.IsZero() && !out.Since.Before(out.Until) {
		return out, fmt.Errorf("filter since %q is not before until %q: it would select nothing: %w", f.Since, f.Until, ferry.ErrInvalidArgument)
	}
	if len(f.IDs) > maxFilterIDs {
		return out, fmt.Errorf("filter of %d IDs: at most %d: %w", len(f.IDs), maxFilterIDs, ferry.ErrInvalidArgument)
	}
	for _, s := range f.IDs {
		id, err := ferry.ParseID(s)
		if err != nil {
			return out, fmt.Errorf("filter id %q: want a message ID (UUID): %w", s, ferry.ErrInvalidArgument)
		}
		out.IDs = append(out.IDs, id)
	}
	return out, nil
}
