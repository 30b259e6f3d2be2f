package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/commitlog"
)

// produceOpts are the produce command's flags.
type produceOpts struct {
	key, keyDelim, file, headersJSON string
	delim                            string
	nul, whole, atomic               bool
	headers                          []string
	partition                        int
	id, at, notBefore                string
	delay                            time.Duration
	batch                            int
}

// Streaming limits: a batch is published once it holds this many messages
// or bytes, or as soon as nothing more is waiting on the input; at most
// maxInFlight batches wait for their fsync at once (the log commits
// concurrent batches together).
const (
	defaultProduceBatch = 1000
	maxProduceBatch     = 65534
	produceBatchBytes   = 4 << 20
	maxInFlight         = 4
	maxFrame            = 64 << 20
)

func newProduceCmd(g *globals) *cobra.Command {
	var o produceOpts
	cmd := &cobra.Command{
		Use:   "produce TOPIC [MESSAGE...]",
		Short: "Publish messages (from arguments, a file, or stdin), streaming",
		Long: `produce publishes each MESSAGE argument, or the messages read from --file
or stdin, durably (each batch is fsynced before it counts as produced).

Input is read as it arrives and published in batches as it goes: a line
written to a pipe is published without waiting for the end of the input.
Messages are separated by newlines, by --delimiter, or by NUL bytes (-0);
--whole takes the whole input as one message (a binary file stays one
message). With -K DELIM each message is split at its first DELIM into key
and value, as kcat does.

Without --atomic, a failure part-way leaves the batches before it
produced, and the error says how many messages that was. --atomic reads
everything first and writes one all-or-nothing batch (at most 65534
messages and 16 MiB).

The output says where each message went: its partition and offset (a
summary per partition beyond 20 messages; --json lists every message).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runProduce(cmd, g, args[0], args[1:], o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.key, "key", "k", "", "message key for every message (messages of one key stay in order)")
	f.StringVarP(&o.keyDelim, "key-delimiter", "K", "", "split each message at its first occurrence of this into key and value")
	f.StringArrayVarP(&o.headers, "header", "H", nil, "header NAME=VALUE (repeatable; a repeated NAME keeps every value, in order)")
	f.StringVar(&o.headersJSON, "headers-json", "", `headers as a JSON object, e.g. '{"ce-type":"order.placed"}' (added after -H, in name order)`)
	f.StringVarP(&o.file, "file", "f", "", "read messages from this file (- for stdin)")
	f.BoolVar(&o.whole, "whole", false, "the whole input (--file or stdin) is one message")
	f.StringVarP(&o.delim, "delimiter", "D", "\n", `message separator in the input (escapes \n \t \r \0 \\ are understood)`)
	f.BoolVarP(&o.nul, "null", "0", false, "messages are separated by NUL bytes (like xargs -0)")
	f.IntVarP(&o.partition, "partition", "p", -1, "write to this partition instead of choosing by key")
	f.StringVar(&o.id, "id", "", "message ID (a UUID) of the one message produced: a second produce of it within the topic's dedup window writes nothing")
	f.StringVar(&o.at, "time", "", "record time of every message (RFC 3339; default: now)")
	f.DurationVar(&o.delay, "delay", 0, "deliver each message no sooner than this long from now (e.g. 30s)")
	f.StringVar(&o.notBefore, "not-before", "", "deliver each message no sooner than this time (RFC 3339)")
	f.BoolVar(&o.atomic, "atomic", false, "write every message in one all-or-nothing batch (at most 65534 messages, 16 MiB)")
	f.IntVar(&o.batch, "batch", defaultProduceBatch, "most messages in one streamed batch (1 to 65534)")
	return cmd
}

// template is what every produced message starts from.
type template struct {
	topic     string
	key       []byte
	headers   []ferry.Header
	partition int
	id        ferry.ID
	at        time.Time
	notBefore time.Time
	keyDelim  []byte
}

func (o produceOpts) template(topic string, now time.Time) (template, error) {
	t := template{topic: topic, partition: o.partition}
	hdrs, err := parseHeaders(o.headers, o.headersJSON)
	if err != nil {
		return t, err
	}
	t.headers = hdrs
	if o.key != "" && o.keyDelim != "" {
		return t, errors.New("--key and --key-delimiter both set the key: give one")
	}
	if o.key != "" {
		t.key = []byte(o.key)
	}
	if o.keyDelim != "" {
		if t.keyDelim, err = unescape(o.keyDelim); err != nil {
			return t, fmt.Errorf("--key-delimiter: %w", err)
		}
	}
	if o.id != "" {
		if t.id, err = ferry.ParseID(o.id); err != nil {
			return t, fmt.Errorf("--id %q: want a UUID like 0190d5c2-7f5e-7a1b-9c3d-4e5f60718293", o.id)
		}
	}
	if o.at != "" {
		if t.at, err = time.Parse(time.RFC3339Nano, o.at); err != nil {
			return t, fmt.Errorf("--time %q: want an RFC 3339 time like 2026-11-23T10:00:00Z", o.at)
		}
	}
	switch {
	case o.delay != 0 && o.notBefore != "":
		return t, errors.New("--delay and --not-before both set the delivery time: give one")
	case o.delay < 0:
		return t, fmt.Errorf("--delay %v: want a duration of zero or more", o.delay)
	case o.delay > 0:
		t.notBefore = now.Add(o.delay)
	case o.notBefore != "":
		if t.notBefore, err = time.Parse(time.RFC3339Nano, o.notBefore); err != nil {
			return t, fmt.Errorf("--not-before %q: want an RFC 3339 time like 2026-11-23T10:00:00Z", o.notBefore)
		}
	}
	return t, nil
}

// message makes one message of payload from the template.
func (t template) message(payload []byte) *ferry.Message {
	m := &ferry.Message{Topic: t.topic, Key: t.key, Payload: payload, Headers: slices.Clone(t.headers), ID: t.id, Time: t.at, NotBefore: t.notBefore}
	if t.keyDelim != nil {
		if k, v, ok := bytes.Cut(payload, t.keyDelim); ok {
			m.Key, m.Payload = k, v
		}
	}
	if t.partition >= 0 {
		m.Partition, m.PinPartition = int32(t.partition), true
	}
	return m
}

func runProduce(cmd *cobra.Command, g *globals, topic string, args []string, o produceOpts) error {
	tpl, err := o.template(topic, time.Now())
	if err != nil {
		return usageError{err}
	}
	if o.batch < 1 || o.batch > maxProduceBatch {
		return usageError{fmt.Errorf("--batch %d: want 1 to %d", o.batch, maxProduceBatch)}
	}
	var in io.Reader
	switch {
	case len(args) > 0 && (o.file != "" || o.whole):
		return usageError{errors.New("messages given as arguments: --file and --whole read input instead; give one or the other")}
	case len(args) == 0:
		in = cmd.InOrStdin()
		if o.file != "" && o.file != "-" {
			f, err := os.Open(o.file)
			if err != nil {
				return usageError{err}
			}
			defer f.Close()
			in = f
		}
	}
	split, err := o.splitter()
	if err != nil {
		return usageError{err}
	}
	p := &producer{tpl: tpl, singleID: !tpl.id.IsZero()}
	if g.remote.isRemote() {
		if o.atomic {
			return usageError{errors.New("--atomic commits one batch of the log: it works on a data directory (--dir) only")}
		}
		api, closeAPI, err := g.api(cmd.Context(), cmd, true, false)
		if err != nil {
			return err
		}
		defer closeAPI()
		if _, err := api.Topic(cmd.Context(), topic); err != nil {
			return err
		}
		o.batch = min(o.batch, admin.MaxProduce)
		// One request at a time: requests in flight together could land
		// in any order, and a key's messages must keep the input's.
		p.publish = func(ctx context.Context, msgs []*ferry.Message, done func(*commitlog.Batch, error)) {
			wire := make([]admin.Message, len(msgs))
			for i, m := range msgs {
				wire[i] = admin.NewMessage(m)
			}
			out, err := api.Produce(ctx, topic, wire)
			b := &commitlog.Batch{Messages: msgs}
			for i := range min(len(out), len(msgs)) {
				msgs[i].Partition, msgs[i].Offset = out[i].Partition, out[i].Offset
				if out[i].Duplicate {
					b.Duplicates++
				}
			}
			done(b, err)
		}
	} else {
		l, err := g.open(cmd.Context(), true)
		if err != nil {
			return err
		}
		defer l.Close()
		if _, err := l.Topic(topic); err != nil {
			return usageError{err}
		}
		p.l = l
		p.publish = func(ctx context.Context, msgs []*ferry.Message, done func(*commitlog.Batch, error)) {
			l.CommitAsync(ctx, &commitlog.Batch{Messages: msgs}, done)
		}
	}

	frames := make(chan []byte, 2*o.batch)
	readErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	go func() {
		defer close(frames)
		readErr <- readFrames(ctx, in, args, split, frames)
	}()
	if o.atomic {
		err = p.atomic(ctx, frames)
	} else {
		err = p.stream(ctx, frames, o.batch)
	}
	cancel()
	for range frames {
		// Let the reader end.
	}
	if rerr := <-readErr; err == nil && rerr != nil && !errors.Is(rerr, context.Canceled) {
		err = rerr
	}
	if err == nil && p.count == 0 {
		return usageError{errors.New("no messages to produce: give them as arguments, with --file, or on stdin")}
	}
	if perr := p.print(cmd.OutOrStdout(), g, topic); perr != nil && err == nil {
		err = perr
	}
	return err
}

// splitter returns how the input is cut into messages (nil: whole).
func (o produceOpts) splitter() (bufio.SplitFunc, error) {
	if o.whole {
		if o.nul || o.delim != "\n" {
			return nil, errors.New("--whole reads the input as one message: --delimiter and -0 do not apply")
		}
		return nil, nil
	}
	d := []byte{0}
	if o.nul {
		if o.delim != "\n" {
			return nil, errors.New("-0 and --delimiter both set the separator: give one")
		}
	} else {
		var err error
		if d, err = unescape(o.delim); err != nil {
			return nil, fmt.Errorf("--delimiter: %w", err)
		}
		if len(d) == 0 {
			return nil, errors.New("--delimiter is empty: give a separator, or --whole for one message")
		}
	}
	return func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.Index(data, d); i >= 0 {
			return i + len(d), data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	}, nil
}

// unescape reads \n, \t, \r, \0 and \\ in a separator given on the
// command line.
func unescape(s string) ([]byte, error) {
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		if i+1 == len(s) {
			return nil, fmt.Errorf("%q ends with a lone backslash (write \\\\ for one)", s)
		}
		i++
		b, ok := escape(s[i])
		if !ok {
			return nil, fmt.Errorf("%q: unknown escape \\%c (known: \\n \\t \\r \\0 \\\\)", s, s[i])
		}
		out = append(out, b)
	}
	return out, nil
}

// escape returns the byte the backslash escape \c stands for in a
// separator (--delimiter) or, but for \0, a --format string: \n \t \r
// \0 \\.
func escape(c byte) (byte, bool) {
	switch c {
	case 'n':
		return '\n', true
	case 't':
		return '\t', true
	case 'r':
		return '\r', true
	case '0':
		return 0, true
	case '\\':
		return '\\', true
	}
	return 0, false
}

// readFrames sends each message of the input (the arguments, or in cut
// by split; nil split: all of in is one) to frames, as it is read.
func readFrames(ctx context.Context, in io.Reader, args []string, split bufio.SplitFunc, frames chan<- []byte) error {
	send := func(b []byte) error {
		select {
		case frames <- b:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if in == nil {
		for _, a := range args {
			if err := send([]byte(a)); err != nil {
				return err
			}
		}
		return nil
	}
	if split == nil {
		b, err := io.ReadAll(io.LimitReader(in, maxFrame+1))
		if err != nil {
			return err
		}
		if len(b) > maxFrame {
			return fmt.Errorf("input: longer than %d MiB, the most produce reads as one message", maxFrame>>20)
		}
		if len(b) == 0 {
			return nil
		}
		return send(b)
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), maxFrame)
	sc.Split(split)
	n := 0
	for sc.Scan() {
		n++
		if err := send(bytes.Clone(sc.Bytes())); err != nil {
			return err
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return fmt.Errorf("input: message %d is longer than %d MiB, the most produce reads as one message", n+1, maxFrame>>20)
	}
	return sc.Err()
}

// producer publishes frames and keeps where each message went.
type producer struct {
	l        *commitlog.Log // --atomic's
	tpl      template
	singleID bool
	// publish commits a streamed batch and calls done: the log's group
	// commit, or the admin API's produce.
	publish func(ctx context.Context, msgs []*ferry.Message, done func(*commitlog.Batch, error))

	mu         sync.Mutex
	count      int // messages read into batches
	produced   []*ferry.Message
	duplicates int
}

// atomic publishes every frame in one batch.
func (p *producer) atomic(ctx context.Context, frames <-chan []byte) error {
	var msgs []*ferry.Message
	for f := range frames {
		msgs = append(msgs, p.tpl.message(f))
		if len(msgs) > maxProduceBatch {
			return usageError{fmt.Errorf("--atomic: more than %d messages, the most one batch holds (without --atomic, produce streams in batches)", maxProduceBatch)}
		}
	}
	if err := p.checkSingleID(len(msgs)); err != nil {
		return err
	}
	p.count = len(msgs)
	if len(msgs) == 0 {
		return nil
	}
	b := &commitlog.Batch{Messages: msgs}
	if err := p.l.Commit(ctx, b); err != nil {
		return fmt.Errorf("--atomic: nothing was produced: %w", err)
	}
	p.done(b)
	return nil
}

func (p *producer) checkSingleID(n int) error {
	if p.singleID && n > 1 {
		return usageError{fmt.Errorf("--id sets the ID of one message: %d messages were given", n)}
	}
	return nil
}

func (p *producer) done(b *commitlog.Batch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.produced = append(p.produced, b.Messages...)
	p.duplicates += b.Duplicates
}

// stream publishes frames in batches as they arrive: a batch takes what
// is waiting (up to max messages or produceBatchBytes) and is committed
// while the next is read, with up to maxInFlight batches in flight.
func (p *producer) stream(ctx context.Context, frames <-chan []byte, max int) error {
	var (
		wg       sync.WaitGroup
		slots    = make(chan struct{}, maxInFlight)
		errMu    sync.Mutex
		firstErr error
		failedAt int
	)
	fail := func(at int, err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if firstErr == nil || at < failedAt {
			firstErr, failedAt = err, at
		}
	}
	failed := func() bool { errMu.Lock(); defer errMu.Unlock(); return firstErr != nil }
	for f := range frames {
		msgs := []*ferry.Message{p.tpl.message(f)}
		size := len(f)
	fill:
		for len(msgs) < max && size < produceBatchBytes {
			select {
			case f, ok := <-frames:
				if !ok {
					break fill
				}
				msgs = append(msgs, p.tpl.message(f))
				size += len(f)
			default:
				break fill
			}
		}
		if err := p.checkSingleID(p.count + len(msgs)); err != nil {
			fail(p.count, err)
			break
		}
		at := p.count
		p.count += len(msgs)
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			fail(at, ctx.Err())
		}
		if failed() {
			break
		}
		wg.Add(1)
		p.publish(ctx, msgs, func(b *commitlog.Batch, err error) {
			defer wg.Done()
			defer func() { <-slots }()
			if err != nil {
				fail(at, inputError(at, len(msgs), err))
				return
			}
			p.done(b)
		})
		if failed() {
			break
		}
	}
	wg.Wait()
	if firstErr != nil {
		if len(p.produced) == 0 {
			return fmt.Errorf("%w (nothing was produced)", firstErr)
		}
		return fmt.Errorf("%w (%d message(s) were produced before it)", firstErr, len(p.produced))
	}
	return nil
}

// inputError says which message of the input (counting from 1) a batch
// of n from the input's at-th failed at, naming it once.
func inputError(at, n int, err error) error {
	if me, ok := errors.AsType[*commitlog.MessageError](err); ok {
		return fmt.Errorf("message %d of the input: %w", at+me.Index+1, me.Err)
	}
	if n == 1 {
		return fmt.Errorf("message %d of the input: %w", at+1, err)
	}
	return fmt.Errorf("messages %d to %d of the input: %w", at+1, at+n, err)
}

// print reports where the messages went.
func (p *producer) print(w io.Writer, g *globals, topic string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	slices.SortFunc(p.produced, func(a, b *ferry.Message) int {
		if a.Partition != b.Partition {
			return cmp.Compare(a.Partition, b.Partition)
		}
		return cmp.Compare(a.Offset, b.Offset)
	})
	type row struct {
		ID        string `json:"id"`
		Partition int32  `json:"partition"`
		Offset    uint64 `json:"offset"`
		Duplicate bool   `json:"duplicate,omitempty"` // --id of a message already in the dedup window
	}
	out := struct {
		Topic      string `json:"topic"`
		Produced   int    `json:"produced"`
		Duplicates int    `json:"duplicates"`
		Messages   []row  `json:"messages"`
	}{Topic: topic, Produced: len(p.produced) - p.duplicates, Duplicates: p.duplicates, Messages: []row{}}
	for _, m := range p.produced {
		out.Messages = append(out.Messages, row{m.ID.String(), m.Partition, m.Offset, p.singleID && p.duplicates == 1})
	}
	if len(p.produced) == 0 {
		if g.json {
			return g.print(w, out, nil)
		}
		return nil
	}
	return g.print(w, out, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "produced %d message(s) to %s", out.Produced, topic)
		if p.duplicates > 0 {
			fmt.Fprintf(tw, " (%d duplicate(s) of messages already in the dedup window written nothing; shown at the original's offset)", p.duplicates)
		}
		fmt.Fprintln(tw)
		if len(p.produced) <= 20 {
			for _, m := range p.produced {
				fmt.Fprintf(tw, "  %s/%d@%d\t%s\n", topic, m.Partition, m.Offset, m.ID)
			}
			return
		}
		for i := 0; i < len(p.produced); {
			j := i
			for j < len(p.produced) && p.produced[j].Partition == p.produced[i].Partition {
				j++
			}
			fmt.Fprintf(tw, "  partition %d:\t%d message(s)\toffsets %d to %d\n", p.produced[i].Partition, j-i, p.produced[i].Offset, p.produced[j-1].Offset)
			i = j
		}
	})
}

func parseHeaders(kv []string, js string) ([]ferry.Header, error) {
	var out []ferry.Header
	for _, h := range kv {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("header %q: want NAME=VALUE", h)
		}
		out = append(out, ferry.Header{Key: k, Value: []byte(v)})
	}
	if js != "" {
		var m map[string]string
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			return nil, fmt.Errorf("--headers-json: want a JSON object of strings, e.g. '{\"ce-type\":\"x\"}': %v", err)
		}
		names := make([]string, 0, len(m))
		for k := range m {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			out = append(out, ferry.Header{Key: k, Value: []byte(m[k])})
		}
	}
	return out, nil
}
