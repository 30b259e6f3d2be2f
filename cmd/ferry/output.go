package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ferrymq/ferry"
)

// Encodings of keys, payloads and header values (-e/--encoding, and the
// "encoding" field of consume --json).
const (
	encText   = "text"
	encBase64 = "base64"
	encHex    = "hex"
)

// outputOpts are the flags choosing how consume and tail print messages.
type outputOpts struct {
	json     bool   // --json
	verbose  bool   // --verbose
	format   string // --format
	encoding string // -e: "", base64, hex or text
}

// printer writes consumed messages in one of the output forms.
type printer struct {
	w        io.Writer
	notes    io.Writer // where noteDelayed writes (nil: nowhere)
	json     bool
	verbose  bool
	format   []formatPart // nil: not --format
	encoding string
}

// noteDelayed says that partition p of topic stops at off, a message not
// due until when, and how to read past it: a reader of the log does not
// see past a message not due (nor do consumers).
func (pr *printer) noteDelayed(topic string, p int32, off uint64, when time.Time) {
	if pr.notes == nil {
		return
	}
	fmt.Fprintf(pr.notes, "ferry: %s partition %d stops at offset %d: a message not due until %s (consumers wait for it too); --partition %d --from %d reads past it\n",
		topic, p, off, when.UTC().Format(time.RFC3339), p, off+1)
}

// newPrinter checks the output flags and returns a printer for them.
func newPrinter(w io.Writer, o outputOpts) (*printer, error) {
	switch o.encoding {
	case "", encBase64, encHex, encText:
	default:
		return nil, usageError{fmt.Errorf("--encoding %q: want base64, hex or text", o.encoding)}
	}
	forms := 0
	for _, on := range []bool{o.json, o.verbose, o.format != ""} {
		if on {
			forms++
		}
	}
	if forms > 1 {
		return nil, usageError{fmt.Errorf("--json, --verbose and --format are different output forms: choose one")}
	}
	p := &printer{w: w, json: o.json, verbose: o.verbose, encoding: o.encoding}
	if o.format != "" {
		f, err := parseFormat(o.format)
		if err != nil {
			return nil, err
		}
		p.format = f
	}
	return p, nil
}

// jsonHeader is one header in consume --json: a list keeps the order and
// repeated names a JSON object would lose.
type jsonHeader struct {
	Key string `json:"key"`
	// KeyEncoding is "base64" for a header name that is not valid UTF-8
	// (rare); header names are otherwise always text.
	KeyEncoding string `json:"key_encoding,omitempty"`
	Value       string `json:"value"`
}

// jsonRecord is one line of consume --json. Encoding says how Key, Payload
// and every header's Value are written (text, base64 or hex).
type jsonRecord struct {
	ID        string       `json:"id"`
	Topic     string       `json:"topic"`
	Partition int32        `json:"partition"`
	Offset    uint64       `json:"offset"`
	Time      time.Time    `json:"time"`
	Encoding  string       `json:"encoding"`
	Key       string       `json:"key,omitempty"`
	Headers   []jsonHeader `json:"headers,omitempty"`
	Payload   string       `json:"payload"`
}

// print writes one message.
func (p *printer) print(m *ferry.Message) error {
	enc, err := p.encodingOf(m)
	if err != nil {
		return err
	}
	switch {
	case p.json:
		return p.printJSON(m, enc)
	case p.verbose:
		return p.printVerbose(m, enc)
	case p.format != nil:
		return p.printFormat(m, enc)
	}
	_, err = fmt.Fprintf(p.w, "%s/%d@%d\t%s\t%s\n", m.Topic, m.Partition, m.Offset, encode(enc, m.Key), encode(enc, m.Payload))
	return err
}

// encodingOf decides how m's bytes are written: -e if given (text only if
// they are valid UTF-8); else, for --json, text when they are valid UTF-8
// and base64 when not; else "" (the bytes as they are).
func (p *printer) encodingOf(m *ferry.Message) (string, error) {
	switch p.encoding {
	case encBase64, encHex:
		return p.encoding, nil
	case encText:
		if what := invalidUTF8(m); what != "" {
			return "", fmt.Errorf("%s/%d@%d: the %s is not valid UTF-8, so -e text cannot print it unaltered: use -e base64 or -e hex (or --json without -e, which picks base64 for such messages)", m.Topic, m.Partition, m.Offset, what)
		}
		return encText, nil
	}
	if !p.json {
		return "", nil
	}
	if invalidUTF8(m) != "" {
		return encBase64, nil
	}
	return encText, nil
}

// invalidUTF8 names the first part of m (key, payload, a header's value)
// that is not valid UTF-8, or returns "".
func invalidUTF8(m *ferry.Message) string {
	if !utf8.Valid(m.Key) {
		return "key"
	}
	if !utf8.Valid(m.Payload) {
		return "payload"
	}
	for _, h := range m.Headers {
		if !utf8.Valid(h.Value) {
			return fmt.Sprintf("value of header %q", h.Key)
		}
	}
	return ""
}

// encode writes b in the encoding enc ("" and text: as it is).
func encode(enc string, b []byte) string {
	switch enc {
	case encBase64:
		return base64.StdEncoding.EncodeToString(b)
	case encHex:
		return hex.EncodeToString(b)
	}
	return string(b)
}

func (p *printer) printJSON(m *ferry.Message, enc string) error {
	r := jsonRecord{ID: m.ID.String(), Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Time: m.Time.UTC(),
		Encoding: enc, Key: encode(enc, m.Key), Payload: encode(enc, m.Payload)}
	for _, h := range m.Headers {
		jh := jsonHeader{Key: h.Key, Value: encode(enc, h.Value)}
		if !utf8.ValidString(h.Key) {
			jh.Key, jh.KeyEncoding = base64.StdEncoding.EncodeToString([]byte(h.Key)), encBase64
		}
		r.Headers = append(r.Headers, jh)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(p.w, "%s\n", b)
	return err
}

// printVerbose writes a block per message:
//
//	orders/0@3  2026-11-23T10:00:00.123Z  id 0190...
//	  key      c1
//	  header   ce-type=order.placed
//	  payload  {"total":1}
func (p *printer) printVerbose(m *ferry.Message, enc string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d@%d  %s  id %s", m.Topic, m.Partition, m.Offset, m.Time.UTC().Format(time.RFC3339Nano), m.ID)
	if enc == encBase64 || enc == encHex {
		fmt.Fprintf(&b, "  (%s)", enc)
	}
	b.WriteString("\n")
	if m.Key != nil {
		fmt.Fprintf(&b, "  key      %s\n", encode(enc, m.Key))
	}
	for _, h := range m.Headers {
		fmt.Fprintf(&b, "  header   %s=%s\n", h.Key, encode(enc, h.Value))
	}
	fmt.Fprintf(&b, "  payload  %s\n", encode(enc, m.Payload))
	_, err := io.WriteString(p.w, b.String())
	return err
}

// formatPart is a piece of a --format string: literal text, or the field
// a %-verb names (verb != 0).
type formatPart struct {
	text string
	verb byte
}

// formatVerbs are the --format verbs, for errors.
const formatVerbs = "%k key, %v value (payload), %h headers, %T timestamp (ms), %p partition, %o offset, %t topic, %i ID, %% a percent sign"

// parseFormat parses a kcat-like --format string: %k %v %h %T %p %o %t %i
// and %%, and the escapes \n \t \r \\.
func parseFormat(s string) ([]formatPart, error) {
	var parts []formatPart
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			parts = append(parts, formatPart{text: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '%':
			if i+1 == len(s) {
				return nil, usageError{fmt.Errorf("--format %q ends in a lone %%: want one of %s", s, formatVerbs)}
			}
			i++
			switch v := s[i]; v {
			case '%':
				lit.WriteByte('%')
			case 'k', 'v', 'h', 'T', 'p', 'o', 't', 'i':
				flush()
				parts = append(parts, formatPart{verb: v})
			default:
				return nil, usageError{fmt.Errorf("--format %q: unknown verb %%%c: want one of %s", s, v, formatVerbs)}
			}
		case '\\':
			if i+1 == len(s) {
				return nil, usageError{fmt.Errorf(`--format %q ends in a lone \: want \n, \t, \r or \\`, s)}
			}
			i++
			b, ok := escape(s[i])
			if !ok || s[i] == '0' {
				return nil, usageError{fmt.Errorf(`--format %q: unknown escape \%c: want \n, \t, \r or \\`, s, s[i])}
			}
			lit.WriteByte(b)
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	return parts, nil
}

func (p *printer) printFormat(m *ferry.Message, enc string) error {
	var b strings.Builder
	for _, part := range p.format {
		switch part.verb {
		case 0:
			b.WriteString(part.text)
		case 'k':
			b.WriteString(encode(enc, m.Key))
		case 'v':
			b.WriteString(encode(enc, m.Payload))
		case 'h':
			for i, h := range m.Headers {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(h.Key)
				b.WriteByte('=')
				b.WriteString(encode(enc, h.Value))
			}
		case 'T':
			b.WriteString(strconv.FormatInt(m.Time.UnixMilli(), 10))
		case 'p':
			b.WriteString(strconv.Itoa(int(m.Partition)))
		case 'o':
			b.WriteString(strconv.FormatUint(m.Offset, 10))
		case 't':
			b.WriteString(m.Topic)
		case 'i':
			b.WriteString(m.ID.String())
		}
	}
	_, err := io.WriteString(p.w, b.String())
	return err
}
