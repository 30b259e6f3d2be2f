package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/ferrymq/ferry/broker/groups"
	"github.com/ferrymq/ferry/commitlog"
)

// Server answers Kafka requests on the listeners it serves, from one log.
type Server struct {
	log *commitlog.Log
	cfg cfg

	producers *producers
	txns      *txns
	groups    *groups.Coordinator

	mu     sync.Mutex
	lns    map[net.Listener]bool
	conns  map[*conn]bool
	closed bool
	wg     sync.WaitGroup // connections
	ctx    context.Context
	cancel context.CancelFunc
}

type cfg struct {
	logger          *slog.Logger
	advertised      string // host:port told to clients; "" = the listener's
	maxRequestBytes int
	maxInFlight     int
	maxInFlightB    int
	maxConns        int
	autoCreate      bool
	maxTxnBytes     int
	security        *Security
	observer        Observer
	sessionMin      time.Duration
	sessionMax      time.Duration
	nodeID          int32
	clusterID       string
}

// Opt configures New.
type Opt interface{ apply(*cfg) }

type optFunc func(*cfg)

func (f optFunc) apply(c *cfg) { f(c) }

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) Opt { return optFunc(func(c *cfg) { c.logger = l }) }

// WithAdvertisedAddr sets the host:port clients are told to connect to
// (Metadata's broker address). By default it is the address of the
// listener the client connected to.
func WithAdvertisedAddr(hostPort string) Opt {
	return optFunc(func(c *cfg) { c.advertised = hostPort })
}

// WithMaxRequestBytes bounds the size of one request (default 100 MiB, as
// Kafka's socket.request.max.bytes); a larger one closes its connection.
func WithMaxRequestBytes(n int) Opt { return optFunc(func(c *cfg) { c.maxRequestBytes = n }) }

// WithMaxInFlight bounds the requests of one connection read but not yet
// answered (default 32); beyond it the connection is not read until the
// oldest is answered, which pushes back on the client through TCP.
func WithMaxInFlight(n int) Opt { return optFunc(func(c *cfg) { c.maxInFlight = n }) }

// WithMaxInFlightBytes bounds the bytes of one connection's requests read
// but not yet answered (default 64 MiB); beyond it the connection is not
// read until answers went out. A single request larger than the bound is
// still read, alone.
func WithMaxInFlightBytes(n int) Opt { return optFunc(func(c *cfg) { c.maxInFlightB = n }) }

// WithMaxConnections bounds the open connections (default 10000); one
// more is closed at once.
func WithMaxConnections(n int) Opt { return optFunc(func(c *cfg) { c.maxConns = n }) }

// WithAutoCreateTopics makes Metadata requests that allow it create the
// topics they name, with one partition (Kafka's auto.create.topics.enable;
// default off: a misspelled topic name is an error, not a new topic).
func WithAutoCreateTopics(on bool) Opt { return optFunc(func(c *cfg) { c.autoCreate = on }) }

// WithMaxTransactionBytes bounds what one open transaction holds (default
// 8 MiB, about its records' keys, values and headers): a transaction is
// written as one atomic batch of the log at EndTxn, so keep it below the
// log's commitlog.WithMaxBatchBytes (default 16 MiB). A produce beyond it
// is refused with RECORD_LIST_TOO_LARGE and the transaction can only be
// aborted.
func WithMaxTransactionBytes(n int) Opt { return optFunc(func(c *cfg) { c.maxTxnBytes = n }) }

// WithGroupSessionTimeouts bounds the session timeout a group member may
// ask for (default 6 s to 30 min, as Kafka's group.min/max.session.timeout.ms);
// a join outside is refused with INVALID_SESSION_TIMEOUT.
func WithGroupSessionTimeouts(min, max time.Duration) Opt {
	return optFunc(func(c *cfg) { c.sessionMin, c.sessionMax = min, max })
}

// WithSecurity makes every connection authenticate with SASL (PLAIN,
// SCRAM-SHA-256 or SCRAM-SHA-512) before any request but ApiVersions, and
// checks every request against sec's ACLs. Use it with TLS (a listener
// from tls.NewListener) when clients are not on the same host: PLAIN
// sends the password as it is.
func WithSecurity(sec *Security) Opt { return optFunc(func(c *cfg) { c.security = sec }) }

// Observer receives the server's measurements (package metrics implements
// it for Prometheus). Its methods are called from the connections'
// goroutines and must not block.
type Observer interface {
	// Request is one answered request: its API's name, the time from
	// reading it to its answer, and whether the answer carried an error.
	Request(api string, d time.Duration, failed bool)
	// Connection is a connection opened (1) or closed (-1).
	Connection(delta int)
	// Bytes are bytes read from (in) and written to (out) clients.
	Bytes(in, out int)
}

// WithObserver reports requests, connections and bytes to o.
func WithObserver(o Observer) Opt { return optFunc(func(c *cfg) { c.observer = o }) }

// New returns a server of l. The caller keeps ownership of l: Close the
// server before closing the log.
func New(l *commitlog.Log, opts ...Opt) (*Server, error) {
	c := cfg{
		logger:          slog.New(slog.DiscardHandler),
		maxRequestBytes: 100 << 20,
		maxInFlight:     32,
		maxInFlightB:    64 << 20,
		maxConns:        10000,
		maxTxnBytes:     8 << 20,
		sessionMin:      6 * time.Second,
		sessionMax:      30 * time.Minute,
		clusterID:       "ferry",
	}
	for _, o := range opts {
		o.apply(&c)
	}
	switch {
	case l == nil:
		return nil, errors.New("broker: nil log")
	case c.maxRequestBytes < 1<<10:
		return nil, fmt.Errorf("broker: max request bytes %d: at least 1024", c.maxRequestBytes)
	case c.maxInFlightB < 1<<10:
		return nil, fmt.Errorf("broker: max in-flight bytes %d: at least 1024", c.maxInFlightB)
	case c.maxInFlight < 1:
		return nil, fmt.Errorf("broker: max in-flight requests %d: at least 1", c.maxInFlight)
	case c.maxTxnBytes < 1<<10:
		return nil, fmt.Errorf("broker: max transaction bytes %d: at least 1024", c.maxTxnBytes)
	case c.sessionMin <= 0 || c.sessionMax < c.sessionMin:
		return nil, fmt.Errorf("broker: group session timeouts %v to %v: want 0 < min <= max", c.sessionMin, c.sessionMax)
	case c.maxConns < 1:
		return nil, fmt.Errorf("broker: max connections %d: at least 1", c.maxConns)
	}
	if c.advertised != "" {
		if _, _, err := splitHostPort(c.advertised); err != nil {
			return nil, fmt.Errorf("broker: advertised address: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{log: l, cfg: c, lns: map[net.Listener]bool{}, conns: map[*conn]bool{}, ctx: ctx, cancel: cancel}
	s.producers = newProducers()
	s.txns = newTxns(c.maxTxnBytes)
	s.groups = groups.New(groups.WithLogger(c.logger), groups.WithSessionTimeoutBounds(c.sessionMin, c.sessionMax))
	return s, nil
}

// ErrServerClosed is Serve's error when the server was closed before it
// was called (the listener is closed).
var ErrServerClosed = errors.New("broker: server closed")

// Serve accepts connections on ln until Close or ctx ends, and returns
// nil then (the listener is closed). Serve may be called for several
// listeners; after Close it returns ErrServerClosed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return fmt.Errorf("broker: serve %s: %w", ln.Addr(), ErrServerClosed)
	}
	s.lns[ln] = true
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("broker: accept on %s: %w", ln.Addr(), err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		if len(s.conns) >= s.cfg.maxConns {
			s.mu.Unlock()
			s.cfg.logger.Warn("connection refused: too many connections", "remote", nc.RemoteAddr().String(), "max", s.cfg.maxConns)
			nc.Close()
			continue
		}
		c := newConn(s, nc)
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops accepting connections, ends the requests waiting (long
// polls, joins), answers what was read and closes every connection. It
// does not close the log.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()
	s.groups.Close()
	for _, c := range conns {
		c.shutdown()
	}
	s.wg.Wait()
	return nil
}

func splitHostPort(hp string) (string, int32, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("%q: want host:port: %w", hp, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("%q: port must be 1..65535", hp)
	}
	return host, int32(p), nil
}
