package admin

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry"
)

// Verbs a role grants. Admin implies every other.
const (
	VerbRead    = "read"
	VerbProduce = "produce"
	VerbReplay  = "replay"
	VerbRedrive = "redrive"
	VerbPurge   = "purge"
	VerbReset   = "reset"
	VerbAdmin   = "admin"
)

// Verbs lists every verb.
var Verbs = []string{VerbRead, VerbProduce, VerbReplay, VerbRedrive, VerbPurge, VerbReset, VerbAdmin}

// AuthConfig is the access configuration file (JSON):
//
//	{
//	  "tokens":  [{"name": "ops", "hash": "$2a$12$...", "roles": ["operator"]}],
//	  "clients": [{"subject": "CN=ops,O=Example", "roles": ["operator"]}],
//	  "roles": {
//	    "operator": [{"verbs": ["read", "redrive"], "topics": ["orders*"], "groups": ["billing"]}]
//	  }
//	}
//
// A token is stored as its bcrypt hash (ferry admin hash-token prints
// one); a client certificate is named by its subject as Go prints it
// (pkix.Name.String). Topic and group patterns are path.Match globs in
// which '/' is an ordinary character, so "*" matches every name; a DLQ is
// a topic (GROUP.dlq).
type AuthConfig struct {
	Tokens  []TokenConfig     `json:"tokens"`
	Clients []ClientConfig    `json:"clients"`
	Roles   map[string][]Rule `json:"roles"`
}

// TokenConfig is one bearer token.
type TokenConfig struct {
	Name  string   `json:"name"`
	Hash  string   `json:"hash"`
	Roles []string `json:"roles"`
}

// ClientConfig is one client certificate subject.
type ClientConfig struct {
	Subject string   `json:"subject"`
	Roles   []string `json:"roles"`
}

// Rule grants verbs on the topics and groups its patterns match.
type Rule struct {
	Verbs  []string `json:"verbs"`
	Topics []string `json:"topics,omitempty"`
	Groups []string `json:"groups,omitempty"`
}

// Principal is an authenticated caller.
type Principal struct {
	Name   string // token name or certificate subject; "anonymous" without Auth
	Method string // token, mtls, console (a token in the console's session cookie) or none
	rules  []Rule
	all    bool // no Auth: everything is allowed
	// csrf is, for a console session, the token a mutating request must
	// carry in the CSRFHeader.
	csrf string
}

// Verbs returns the verbs p may perform on the topic or group name, in
// the order of Verbs.
func (p Principal) Verbs(kind, name string) []string {
	out := []string{}
	for _, v := range Verbs {
		if p.Allowed(v, kind, name) {
			out = append(out, v)
		}
	}
	return out
}

// Resource kinds a verb applies to.
const (
	KindTopic = "topic"
	KindGroup = "group"
)

// Allowed reports whether p may perform verb on the topic or group name.
func (p Principal) Allowed(verb, kind, name string) bool {
	if p.all {
		return true
	}
	for _, r := range p.rules {
		if !slices.Contains(r.Verbs, verb) && !slices.Contains(r.Verbs, VerbAdmin) {
			continue
		}
		patterns := r.Topics
		if kind == KindGroup {
			patterns = r.Groups
		}
		for _, pat := range patterns {
			if globMatch(pat, name) {
				return true
			}
		}
	}
	return false
}

// globMatch reports whether name matches the path.Match pattern pat, with
// '/' an ordinary character: "*" matches every name, "a/*" every name
// that starts with "a/" (group names may hold slashes).
func globMatch(pat, name string) bool {
	ok, _ := path.Match(strings.ReplaceAll(pat, "/", "\x00"), strings.ReplaceAll(name, "/", "\x00"))
	return ok
}

// Auth authenticates requests by bearer token or client certificate. It is
// safe for concurrent use.
type Auth struct {
	cfg AuthConfig

	mu       sync.Mutex
	verified map[[32]byte]int // sha256 of a token that matched -> index in cfg.Tokens
	// unknown bounds the bcrypt comparisons of tokens not verified yet,
	// which a caller trying tokens (or a login form hammered) would
	// otherwise turn into CPU without end.
	unknown *rate.Limiter
	// now is the limiter's clock (nil: time.Now). A test stops it: on a
	// loaded machine the refill during a burst of bcrypt comparisons
	// would otherwise decide the test.
	now func() time.Time
}

// Bounds of the verification of tokens not seen before: on average
// unknownPerSecond a second, unknownBurst at once. A token once verified
// is checked by its SHA-256 and costs nothing.
const (
	unknownPerSecond = 2
	unknownBurst     = 20
)

// LoadAuth reads an access configuration file (see AuthConfig).
func LoadAuth(file string) (*Auth, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	var cfg AuthConfig
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("access file %s: %w: %w", file, ferry.ErrInvalidArgument, err)
	}
	a, err := NewAuth(cfg)
	if err != nil {
		return nil, fmt.Errorf("access file %s: %w", file, err)
	}
	return a, nil
}

// NewAuth checks cfg and returns an Auth for it: every role named exists,
// every verb is known, every pattern is a valid glob and every hash a
// bcrypt hash.
func NewAuth(cfg AuthConfig) (*Auth, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, ferry.ErrInvalidArgument)...)
	}
	for name, rules := range cfg.Roles {
		for i, r := range rules {
			for _, v := range r.Verbs {
				if !slices.Contains(Verbs, v) {
					return nil, bad("role %s rule %d: verb %q: want %s", name, i, v, strings.Join(Verbs, ", "))
				}
			}
			for _, pat := range append(slices.Clone(r.Topics), r.Groups...) {
				if _, err := path.Match(pat, ""); err != nil {
					return nil, bad("role %s rule %d: pattern %q: %v", name, i, pat, err)
				}
			}
		}
	}
	checkRoles := func(who string, roles []string) error {
		for _, r := range roles {
			if _, ok := cfg.Roles[r]; !ok {
				return bad("%s: role %q is not defined under roles", who, r)
			}
		}
		return nil
	}
	names := map[string]bool{}
	for _, t := range cfg.Tokens {
		if t.Name == "" || names[t.Name] {
			return nil, bad("token %q: each token needs a name of its own", t.Name)
		}
		names[t.Name] = true
		if _, err := bcrypt.Cost([]byte(t.Hash)); err != nil {
			return nil, bad("token %s: hash: want a bcrypt hash (ferry admin hash-token prints one): %v", t.Name, err)
		}
		if err := checkRoles("token "+t.Name, t.Roles); err != nil {
			return nil, err
		}
	}
	for _, c := range cfg.Clients {
		if c.Subject == "" {
			return nil, bad("client: empty subject")
		}
		if err := checkRoles("client "+c.Subject, c.Roles); err != nil {
			return nil, err
		}
	}
	return &Auth{cfg: cfg, verified: map[[32]byte]int{}, unknown: rate.NewLimiter(unknownPerSecond, unknownBurst)}, nil
}

// HashToken returns the bcrypt hash of a token, for the access file.
func HashToken(token string) (string, error) {
	if len(token) < 16 {
		return "", fmt.Errorf("token of %d characters: want at least 16: %w", len(token), ferry.ErrInvalidArgument)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(token), 12)
	return string(h), err
}

// Authenticate returns the caller of r: a verified client certificate
// whose subject the file names, or else a bearer token whose hash it
// holds. A nil Auth lets everyone in as "anonymous" with every verb.
func (a *Auth) Authenticate(r *http.Request) (Principal, error) {
	if a == nil {
		return Principal{Name: "anonymous", Method: "none", all: true}, nil
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		subject := r.TLS.VerifiedChains[0][0].Subject.String()
		for _, c := range a.cfg.Clients {
			if c.Subject == subject {
				return Principal{Name: subject, Method: "mtls", rules: a.rules(c.Roles)}, nil
			}
		}
		if r.Header.Get("Authorization") == "" && len(sessionCookies(r)) == 0 {
			return Principal{}, fmt.Errorf("client certificate %q is not in the access file: %w", subject, ErrUnauthenticated)
		}
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		switch cs := sessionCookies(r); {
		case len(cs) > 1:
			// Cookies are not kept apart by port: another site on this
			// host may have set one of them, for a narrower path, to make
			// the console act as someone else.
			return Principal{}, fmt.Errorf("console session: %d %s cookies sent, want one (another site on this host may have set one; log in again at %s): %w",
				len(cs), SessionCookie, ConsolePath+"login", ErrUnauthenticated)
		case len(cs) == 1:
			p, err := a.token(cs[0].Value)
			if err != nil {
				return Principal{}, fmt.Errorf("console session: %w (log in again at %s)", err, ConsolePath+"login")
			}
			p.Method, p.csrf = "console", csrfToken(cs[0].Value)
			return p, nil
		}
		return Principal{}, fmt.Errorf("no credentials: send Authorization: Bearer TOKEN (or a client certificate): %w", ErrUnauthenticated)
	}
	token, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || token == "" {
		return Principal{}, fmt.Errorf("authorization header: want Bearer TOKEN: %w", ErrUnauthenticated)
	}
	return a.token(token)
}

// token returns the caller a bearer token stands for.
func (a *Auth) token(token string) (Principal, error) {
	sum := sha256.Sum256([]byte(token))
	a.mu.Lock()
	i, ok := a.verified[sum]
	a.mu.Unlock()
	if !ok {
		now := time.Now
		if a.now != nil {
			now = a.now
		}
		if !a.unknown.AllowN(now(), 1) {
			return Principal{}, ErrTooManyAttempts
		}
		i = -1
		for j, t := range a.cfg.Tokens {
			if bcrypt.CompareHashAndPassword([]byte(t.Hash), []byte(token)) == nil {
				i = j
				break
			}
		}
		if i < 0 {
			return Principal{}, fmt.Errorf("the bearer token matches no token in the access file: %w", ErrUnauthenticated)
		}
		a.mu.Lock()
		a.verified[sum] = i
		a.mu.Unlock()
	}
	t := a.cfg.Tokens[i]
	return Principal{Name: t.Name, Method: "token", rules: a.rules(t.Roles)}, nil
}

// sessionCookies returns the console session cookies r carries.
func sessionCookies(r *http.Request) []*http.Cookie {
	var out []*http.Cookie
	for _, c := range r.CookiesNamed(SessionCookie) {
		if c.Value != "" {
			out = append(out, c)
		}
	}
	return out
}

// rules gathers the rules of roles.
func (a *Auth) rules(roles []string) []Rule {
	var out []Rule
	for _, r := range roles {
		out = append(out, a.cfg.Roles[r]...)
	}
	return out
}
