package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry"
)

// Prefix is the path every route of the API lives under.
const Prefix = "/api/v1"

// Bounds of a request body.
const (
	// MaxBody bounds a request body, except a produce's.
	MaxBody = 1 << 20
	// MaxProduceBody bounds a produce request's body.
	MaxProduceBody = 32 << 20
)

// Handler serves a Service as the JSON API under /api/v1, and the web
// console (a client of that API) under /ui/. It authenticates each
// request (Auth), checks the verb its route needs on the topic or group
// it names, refuses mutating requests a browser sends from another site,
// and appends every mutating request, allowed or denied, to the audit
// topic. Mount it at "/" (or at "/api/" for the API alone).
type Handler struct {
	svc  *Service
	auth *Auth
	log  *slog.Logger
	mux  *http.ServeMux
	// cop refuses mutating requests a browser sends from another site.
	cop *http.CrossOriginProtection
}

// NewHandler returns the API over svc. A nil auth lets every request in
// as "anonymous" with every verb: only for a loopback listener.
func NewHandler(svc *Service, auth *Auth) *Handler {
	h := &Handler{svc: svc, auth: auth, log: svc.log, mux: http.NewServeMux(), cop: http.NewCrossOriginProtection()}
	h.mountConsole()
	for _, rt := range routes {
		h.mux.HandleFunc(rt.Method+" "+Prefix+rt.Path, func(w http.ResponseWriter, r *http.Request) { h.serve(rt, w, r) })
	}
	h.mux.HandleFunc("GET "+Prefix+"/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPIDocument)
	})
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		err := h.noRoute(r)
		if errors.Is(err, ErrMethodNotAllowed) {
			w.Header().Set("Allow", strings.Join(h.allowed(r), ", "))
		}
		writeError(w, requestID(r), err)
	})
	return h
}

// noRoute is the error of a request no route takes: ErrMethodNotAllowed
// if the path takes other methods, else ErrNotFound.
func (h *Handler) noRoute(r *http.Request) error {
	if !cleanPath(r.URL.Path) {
		return fmt.Errorf("%s %s: not a clean path (an empty, \".\" or \"..\" segment), redirected and not served: %w", r.Method, r.URL.Path, ErrNotFound)
	}
	if allow := h.allowed(r); len(allow) > 0 {
		return fmt.Errorf("%s %s: the path takes %s: %w", r.Method, r.URL.Path, strings.Join(allow, ", "), ErrMethodNotAllowed)
	}
	return fmt.Errorf("no route %s %s: the API is under %s (see %s/openapi.json): %w", r.Method, r.URL.Path, Prefix, Prefix, ErrNotFound)
}

// allowed returns the methods the routes take on r's path.
func (h *Handler) allowed(r *http.Request) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		other := r.Clone(r.Context())
		other.Method = m
		if _, pattern := h.mux.Handler(other); pattern != "" && pattern != "/" {
			out = append(out, m)
		}
	}
	return out
}

// ServeHTTP implements http.Handler. A mutating request that matches no
// route (an unknown path, or a method the path does not take) gets the
// mux's answer, and is audited as verb "unrouted": every attempt to
// change something is on record.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !mutating(r.Method) {
		h.mux.ServeHTTP(w, r)
		return
	}
	if _, pattern := h.mux.Handler(r); pattern != "" && pattern != "/" && cleanPath(r.URL.Path) {
		h.mux.ServeHTTP(w, r) // routed: the route audits it
		return
	}
	// No route takes it, or the mux would redirect it to a cleaned path
	// (the route's pattern comes back with the redirect).
	c := &call{h: h, w: w, r: r, id: requestID(r)}
	w.Header().Set("X-Request-Id", c.id)
	if err := c.identify(); err != nil {
		writeError(w, c.id, err) // who may not ask is not told the routes
		status, _ := errorCode(err)
		h.audit(c, VerbUnrouted, status, err)
		return
	}
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	h.mux.ServeHTTP(sw, r)
	h.audit(c, VerbUnrouted, sw.status, h.noRoute(r))
}

// cleanPath reports whether p is already clean as the mux cleans paths
// (no empty, "." or ".." segment), so that it is served without a redirect.
func cleanPath(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// VerbUnrouted is the audit verb of a mutating request that matched no
// route; no role grants it.
const VerbUnrouted = "unrouted"

// mutating reports whether a request of this method may change something
// (and so is audited).
func mutating(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// call is one request being served.
type call struct {
	h     *Handler
	w     http.ResponseWriter
	r     *http.Request
	id    string
	who   Principal
	audit AuditData
	// streamed says the response has started (server-sent events): an
	// error can no longer change its status.
	streamed bool
}

// serve runs one route.
func (h *Handler) serve(rt route, w http.ResponseWriter, r *http.Request) {
	c := &call{h: h, w: w, r: r, id: requestID(r)}
	w.Header().Set("X-Request-Id", c.id)
	var out any
	err := c.identify()
	if err == nil {
		out, err = rt.handle(c)
	}
	status := http.StatusOK
	if err != nil {
		status, _ = errorCode(err)
	}
	if mutating(r.Method) {
		h.audit(c, rt.Verb, status, err)
	}
	switch {
	case c.streamed && err != nil:
		c.event("error", errorBody(err, c.id))
	case c.streamed:
	case err != nil:
		writeError(w, c.id, err)
	default:
		writeJSON(w, status, out)
	}
}

// identify authenticates the caller and names it in the audit data
// (unauthenticated: by its verified certificate subject if it has one).
func (c *call) identify() error {
	r := c.r
	c.audit = AuditData{Method: r.Method, Path: r.URL.Path, RequestID: c.id}
	who, err := c.h.auth.Authenticate(r)
	if err == nil {
		c.who = who
		c.audit.Actor, c.audit.Auth = who.Name, who.Method
		return c.checkOrigin()
	}
	c.audit.Actor, c.audit.Auth = "unauthenticated", "none"
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		c.audit.Actor, c.audit.Auth = r.TLS.VerifiedChains[0][0].Subject.String(), "mtls"
	}
	return err
}

// audit appends the record of a mutating request to the audit topic.
func (h *Handler) audit(c *call, verb string, status int, err error) {
	c.audit.Status = status
	switch {
	case err == nil:
		c.audit.Result = AuditOK
	case errors.Is(err, ErrUnauthenticated), errors.Is(err, ErrForbidden), errors.Is(err, ErrProtected):
		c.audit.Result, c.audit.Error = AuditDenied, err.Error()
	default:
		c.audit.Result, c.audit.Error = AuditFailed, err.Error()
	}
	target := c.audit.Target
	if target == "" {
		target = c.r.URL.Path
	}
	rec := h.svc.NewAuditRecord(verb, target, c.audit)
	// The record is written even if the caller has gone: what was done
	// must be on record.
	actx, cancel := context.WithTimeout(context.WithoutCancel(c.r.Context()), 30*time.Second)
	aerr := h.svc.Record(actx, rec)
	cancel()
	if aerr != nil {
		// The operation is done; the record of it could not be kept.
		h.log.Error("admin: audit record not written", "request_id", c.id, "actor", c.audit.Actor, "verb", verb, "target", target, "err", aerr)
	}
}

// need checks that the caller may perform verb on the topic or group
// name, and records the target for the audit log.
func (c *call) need(verb, kind, name string) error {
	if c.audit.Target == "" {
		c.audit.Target = kind + ":" + name
	}
	if c.who.Allowed(verb, kind, name) {
		return nil
	}
	return fmt.Errorf("%s may not %s %s %q: its roles do not grant %q on it: %w", c.who.Name, verb, kind, name, verb, ErrForbidden)
}

// decode reads the JSON body into v strictly: a Content-Type of
// application/json (so that a browser cannot send it cross-site without
// asking first), at most max bytes, no unknown fields, one value.
func (c *call) decode(v any, max int64) error {
	if ct := c.r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("request body of Content-Type %q: want application/json: %w", ct, ErrUnsupportedMedia)
	}
	body := http.MaxBytesReader(c.w, c.r.Body, max)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("data after the JSON value")
		}
	}
	var tooBig *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooBig):
		return fmt.Errorf("request body larger than %d bytes: %w", tooBig.Limit, ferry.ErrInvalidArgument)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("request body: malformed JSON: it ends before the value does: %w", ferry.ErrInvalidArgument)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("request body: empty, want a JSON object: %w", ferry.ErrInvalidArgument)
	case errors.As(err, &syntax):
		return fmt.Errorf("request body: malformed JSON at byte %d: %v: %w", syntax.Offset, err, ferry.ErrInvalidArgument)
	case errors.As(err, &typ):
		return fmt.Errorf("request body: field %q: want %s, got a JSON %s: %w", typ.Field, typ.Type, typ.Value, ferry.ErrInvalidArgument)
	}
	return fmt.Errorf("request body: %v: %w", err, ferry.ErrInvalidArgument)
}

// query returns the request's query, refusing parameters not in allowed
// and repeated ones.
func (c *call) query(allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(c.r.URL.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("query: %v: %w", err, ferry.ErrInvalidArgument)
	}
	for name, vs := range q {
		if !slices.Contains(allowed, name) {
			want := "none"
			if len(allowed) > 0 {
				want = strings.Join(allowed, ", ")
			}
			return nil, fmt.Errorf("unknown query parameter %q: want %s: %w", name, want, ferry.ErrInvalidArgument)
		}
		if len(vs) > 1 {
			return nil, fmt.Errorf("query parameter %q given %d times: at most once: %w", name, len(vs), ferry.ErrInvalidArgument)
		}
	}
	return q, nil
}

// intParam parses an integer query parameter (absent: 0).
func intParam(q url.Values, name string) (int, error) {
	s, err := param(q, name)
	if s == "" || err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("query parameter %s=%q: want an integer: %w", name, s, ferry.ErrInvalidArgument)
	}
	return n, nil
}

// param returns a query parameter's value ("" if absent); one given
// empty is an error (a script's empty variable must not mean "absent").
func param(q url.Values, name string) (string, error) {
	if q.Has(name) && q.Get(name) == "" {
		return "", fmt.Errorf("query parameter %s is empty: give a value or leave it out: %w", name, ferry.ErrInvalidArgument)
	}
	return q.Get(name), nil
}

// pathInt parses a numeric path segment.
func (c *call) pathInt(name string, bits int) (int64, error) {
	s := c.r.PathValue(name)
	n, err := strconv.ParseInt(s, 10, bits)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s %q in the path: want a number from 0: %w", name, s, ferry.ErrInvalidArgument)
	}
	return n, nil
}

// wantsStream reports whether the client asked for server-sent events.
func (c *call) wantsStream() bool {
	return strings.Contains(c.r.Header.Get("Accept"), "text/event-stream")
}

// startStream begins a server-sent event response.
func (c *call) startStream() {
	c.w.Header().Set("Content-Type", "text/event-stream")
	c.w.Header().Set("Cache-Control", "no-store")
	c.w.WriteHeader(http.StatusOK)
	c.streamed = true
	c.flush()
}

// event writes one server-sent event.
func (c *call) event(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(c.w, "event: %s\ndata: %s\n\n", name, data); err != nil {
		return err
	}
	c.flush()
	return nil
}

func (c *call) flush() {
	if f, ok := c.w.(http.Flusher); ok {
		f.Flush()
	}
}

// requestID returns the request's X-Request-Id if it is a sane one, or a
// new ID.
func requestID(r *http.Request) string {
	id := r.Header.Get("X-Request-Id")
	if id != "" && len(id) <= 64 && !strings.ContainsFunc(id, func(c rune) bool { return c <= ' ' || c > '~' }) {
		return id
	}
	return ferry.NewID().String()
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error     ErrorDetail `json:"error"`
	RequestID string      `json:"request_id"`
}

// ErrorDetail says what went wrong: a stable code to branch on, and a
// message for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes, and the errors they stand for.
var errorCodes = []struct {
	err    error
	status int
	code   string
	also   error // a second sentinel the code stands for (nil: none)
}{
	{ErrTooManyAttempts, http.StatusTooManyRequests, "too_many_attempts", ErrUnauthenticated},
	{ErrUnauthenticated, http.StatusUnauthorized, "unauthenticated", nil},
	{ErrForbidden, http.StatusForbidden, "forbidden", nil},
	{ErrProtected, http.StatusForbidden, "protected", nil},
	{ErrNoDLQ, http.StatusNotFound, "dlq_not_found", ferry.ErrTopicNotFound},
	{ferry.ErrTopicNotFound, http.StatusNotFound, "topic_not_found", nil},
	{ErrNotFound, http.StatusNotFound, "not_found", nil},
	{ErrMethodNotAllowed, http.StatusMethodNotAllowed, "method_not_allowed", nil},
	{ferry.ErrOffsetOutOfRange, http.StatusRequestedRangeNotSatisfiable, "offset_out_of_range", nil},
	{ferry.ErrTopicExists, http.StatusConflict, "topic_exists", nil},
	{ErrGroupActive, http.StatusConflict, "group_active", nil},
	{ErrUnsupportedMedia, http.StatusUnsupportedMediaType, "unsupported_media_type", nil},
	{ferry.ErrInvalidArgument, http.StatusBadRequest, "invalid_argument", nil},
	{ErrUnsupported, http.StatusNotImplemented, "unsupported", nil},
	{ferry.ErrBackpressure, http.StatusServiceUnavailable, "backpressure", nil},
}

// errorCode returns err's status and code.
func errorCode(err error) (int, string) {
	for _, ec := range errorCodes {
		if errors.Is(err, ec.err) {
			return ec.status, ec.code
		}
	}
	return http.StatusInternalServerError, "internal"
}

func errorBody(err error, id string) ErrorBody {
	_, code := errorCode(err)
	return ErrorBody{Error: ErrorDetail{Code: code, Message: err.Error()}, RequestID: id}
}

func writeError(w http.ResponseWriter, id string, err error) {
	status, _ := errorCode(err)
	switch status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, errorBody(err, id))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		fmt.Fprintf(&buf, `{"error":{"code":"internal","message":%q}}`, err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
