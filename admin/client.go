package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ferrymq/ferry"
)

var _ API = (*Client)(nil)

// Client calls a Handler over HTTP. Its methods return what Service's
// return, and errors that wrap the same sentinels (ferry.ErrTopicNotFound,
// ErrForbidden, ...), so a caller cannot tell where the work ran.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// NewClient returns a client of the API at base (http://127.0.0.1:8080).
// token, if not empty, is sent as a bearer token; hc, if not nil, is the
// HTTP client (for TLS and client certificates).
func NewClient(base, token string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server %q: want http://HOST:PORT or https://HOST:PORT: %w", base, ferry.ErrInvalidArgument)
	}
	if hc == nil {
		hc = &http.Client{}
	}
	// A redirect would resend a request elsewhere (or as a GET): an
	// answer of its own, reported as an error.
	own := *hc
	own.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{base: strings.TrimSuffix(base, "/"), token: token, hc: &own}, nil
}

// APIError is an error response of the API. It unwraps to the sentinel its
// code stands for.
type APIError struct {
	Status    int
	Code      string
	Message   string
	RequestID string
}

func (e *APIError) Error() string { return e.Message }

// Unwrap returns the sentinels of e's code (none for internal errors).
func (e *APIError) Unwrap() []error {
	for _, ec := range errorCodes {
		if ec.code == e.Code {
			if ec.also != nil {
				return []error{ec.err, ec.also}
			}
			return []error{ec.err}
		}
	}
	return nil
}

// request sends one request; a 2xx answer is decoded into out.
func (c *Client) request(ctx context.Context, method, path string, q url.Values, body, out any, accept string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	for _, seg := range strings.Split(path, "/")[1:] {
		if seg == "" || seg == "." || seg == ".." {
			// A name a URL path cannot carry: the server would see
			// another path (or redirect).
			return nil, fmt.Errorf("admin API: %s %s: a topic, group or entry name cannot be empty, \".\" or \"..\": %w", method, path, ferry.ErrInvalidArgument)
		}
	}
	u := c.base + Prefix + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API %s: %w", c.base, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	if out == nil {
		return resp, nil // the caller reads the stream
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, fmt.Errorf("admin API %s %s: reading the answer: %w", method, path, err)
	}
	return nil, nil
}

func decodeError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb ErrorBody
	if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
		return &APIError{Status: resp.StatusCode, Code: "internal", Message: fmt.Sprintf("admin API: %s: %s", resp.Status, bytes.TrimSpace(raw))}
	}
	return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, RequestID: eb.RequestID}
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	_, err := c.request(ctx, http.MethodGet, path, q, nil, out, "")
	return err
}

func (c *Client) post(ctx context.Context, path string, body, out any) error {
	_, err := c.request(ctx, http.MethodPost, path, nil, body, out, "")
	return err
}

func esc(s string) string { return url.PathEscape(s) }

// Health implements API.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	return h, c.get(ctx, "/health", nil, &h)
}

// Topics implements API.
func (c *Client) Topics(ctx context.Context) ([]Topic, error) {
	var out []Topic
	return out, c.get(ctx, "/topics", nil, &out)
}

// Topic implements API.
func (c *Client) Topic(ctx context.Context, name string) (Topic, error) {
	var out Topic
	return out, c.get(ctx, "/topics/"+esc(name), nil, &out)
}

// CreateTopic implements API.
func (c *Client) CreateTopic(ctx context.Context, t CreateTopic) (Topic, error) {
	var out Topic
	return out, c.post(ctx, "/topics", t, &out)
}

// DeleteTopic implements API.
func (c *Client) DeleteTopic(ctx context.Context, name string) error {
	var out Deleted
	_, err := c.request(ctx, http.MethodDelete, "/topics/"+esc(name), nil, nil, &out, "")
	return err
}

// AlterTopic implements API.
func (c *Client) AlterTopic(ctx context.Context, name string, a AlterTopic) (Topic, error) {
	var out Topic
	_, err := c.request(ctx, http.MethodPatch, "/topics/"+esc(name), nil, a, &out, "")
	return out, err
}

// Messages implements API.
func (c *Client) Messages(ctx context.Context, topic string, partition int32, start string, limit int) (MessagePage, error) {
	var out MessagePage
	q := url.Values{}
	if start != "" {
		q.Set("start", start)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out, c.get(ctx, fmt.Sprintf("/topics/%s/partitions/%d/messages", esc(topic), partition), q, &out)
}

// Message implements API.
func (c *Client) Message(ctx context.Context, topic string, partition int32, offset uint64) (Message, error) {
	var out Message
	return out, c.get(ctx, fmt.Sprintf("/topics/%s/partitions/%d/messages/%d", esc(topic), partition, offset), nil, &out)
}

// Search implements API.
func (c *Client) Search(ctx context.Context, topic string, s Search) (SearchResult, error) {
	var out SearchResult
	q := url.Values{}
	if s.Key != nil {
		q.Set("key", *s.Key)
	}
	for name, v := range map[string]string{"header": s.Header, "start": s.Start} {
		if v != "" {
			q.Set(name, v)
		}
	}
	for name, v := range map[string]int{"limit": s.Limit, "scan": s.Scan} {
		if v != 0 {
			q.Set(name, strconv.Itoa(v))
		}
	}
	return out, c.get(ctx, "/topics/"+esc(topic)+"/search", q, &out)
}

// Tail implements API: it reads the tail's server-sent events.
func (c *Client) Tail(ctx context.Context, topic string, partition int32, start string, fn func(Message) error) error {
	q := url.Values{}
	if start != "" {
		q.Set("start", start)
	}
	if partition >= 0 {
		q.Set("partition", strconv.Itoa(int(partition)))
	}
	resp, err := c.request(ctx, http.MethodGet, "/topics/"+esc(topic)+"/tail", q, nil, nil, "text/event-stream")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	err = readEvents(resp.Body, func(event string, data []byte) error {
		switch event {
		case "message":
			var m Message
			if err := json.Unmarshal(data, &m); err != nil {
				return fmt.Errorf("tail: event %s: %w", event, err)
			}
			return fn(m)
		case "error":
			return eventError(data)
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// eventError decodes an error event.
func eventError(data []byte) error {
	var eb ErrorBody
	if err := json.Unmarshal(data, &eb); err != nil {
		return fmt.Errorf("admin API: an error event: %s", data)
	}
	return &APIError{Code: eb.Error.Code, Message: eb.Error.Message, RequestID: eb.RequestID}
}

// readEvents calls fn with each server-sent event of r until r ends or fn
// returns an error.
func readEvents(r io.Reader, fn func(event string, data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var event string
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if event != "" || data != nil {
				if err := fn(event, data); err != nil {
					return err
				}
			}
			event, data = "", nil
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: ")...)
		}
	}
	return sc.Err()
}

// Produce implements API.
func (c *Client) Produce(ctx context.Context, topic string, msgs []Message) ([]Produced, error) {
	var out []Produced
	return out, c.post(ctx, "/topics/"+esc(topic)+"/messages", Produce{Messages: msgs}, &out)
}

// Groups implements API.
func (c *Client) Groups(ctx context.Context) ([]GroupSummary, error) {
	var out []GroupSummary
	return out, c.get(ctx, "/groups", nil, &out)
}

// DLQs implements API.
func (c *Client) DLQs(ctx context.Context) ([]DLQSummary, error) {
	var out []DLQSummary
	return out, c.get(ctx, "/dlq", nil, &out)
}

// Group implements API.
func (c *Client) Group(ctx context.Context, name string) (Group, error) {
	var out Group
	return out, c.get(ctx, "/groups/"+esc(name), nil, &out)
}

// ResetGroup implements API.
func (c *Client) ResetGroup(ctx context.Context, group string, r Reset) ([]ResetOffset, error) {
	var out []ResetOffset
	return out, c.post(ctx, "/groups/"+esc(group)+"/reset", r, &out)
}

// DeleteGroup implements API.
func (c *Client) DeleteGroup(ctx context.Context, group string, force bool) error {
	var out GroupDeleted
	q := url.Values{}
	if force {
		q.Set("force", "true")
	}
	_, err := c.request(ctx, http.MethodDelete, "/groups/"+esc(group), q, nil, &out, "")
	return err
}

// DeadLetters implements API.
func (c *Client) DeadLetters(ctx context.Context, queue string, f Filter, page Page) ([]DeadLetter, error) {
	var out []DeadLetter
	q := f.Query()
	if page.Limit != 0 {
		q.Set("limit", strconv.Itoa(page.Limit))
	}
	if page.After != "" {
		q.Set("after", page.After)
	}
	return out, c.get(ctx, "/dlq/"+esc(queue)+"/entries", q, &out)
}

// DeadLetter implements API.
func (c *Client) DeadLetter(ctx context.Context, queue, id string) (DeadLetter, error) {
	var out DeadLetter
	return out, c.get(ctx, "/dlq/"+esc(queue)+"/entries/"+esc(id), nil, &out)
}

// Redrive implements API. With progress set it asks for server-sent
// events and reports each progress event.
func (c *Client) Redrive(ctx context.Context, queue string, r Redrive, progress func(Progress)) (RedriveResult, error) {
	var out RedriveResult
	path := "/dlq/" + esc(queue) + "/redrive"
	if progress == nil {
		return out, c.post(ctx, path, r, &out)
	}
	resp, err := c.request(ctx, http.MethodPost, path, nil, r, nil, "text/event-stream")
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return out, json.NewDecoder(resp.Body).Decode(&out)
	}
	got := false
	err = readEvents(resp.Body, func(event string, data []byte) error {
		switch event {
		case "progress":
			var p Progress
			if err := json.Unmarshal(data, &p); err != nil {
				return err
			}
			progress(p)
		case "result":
			got = true
			return json.Unmarshal(data, &out)
		case "error":
			return eventError(data)
		}
		return nil
	})
	if err == nil && !got {
		err = fmt.Errorf("admin API: the redrive's stream ended without a result (the server stopped?); list the DLQ to see what was requested")
	}
	return out, err
}

// Purge implements API.
func (c *Client) Purge(ctx context.Context, queue string, p Purge) (PurgeResult, error) {
	var out PurgeResult
	return out, c.post(ctx, "/dlq/"+esc(queue)+"/purge", p, &out)
}

// Replay implements API.
func (c *Client) Replay(ctx context.Context, r Replay) (ReplayResult, error) {
	var out ReplayResult
	return out, c.post(ctx, "/replay", r, &out)
}

// AuditLog implements API.
func (c *Client) AuditLog(ctx context.Context, aq AuditQuery) ([]AuditRecord, error) {
	var out []AuditRecord
	q := url.Values{}
	for name, v := range map[string]string{"actor": aq.Actor, "verb": aq.Verb, "result": aq.Result, "since": aq.Since} {
		if v != "" {
			q.Set(name, v)
		}
	}
	if aq.Limit != 0 {
		q.Set("limit", strconv.Itoa(aq.Limit))
	}
	return out, c.get(ctx, "/audit", q, &out)
}

// IsAPIError reports whether err is an error answer of the API (not a
// transport failure).
func IsAPIError(err error) bool {
	var e *APIError
	return errors.As(err, &e)
}
