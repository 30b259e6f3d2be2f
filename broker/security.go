package broker

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"
	"strings"
)

// Security is who may connect and what each may do: users (authenticated
// with SASL PLAIN or SCRAM-SHA-256/512) and ACLs. With a Security, every
// connection authenticates before any request but ApiVersions, and every
// request is checked against the ACLs: what is not allowed is denied with
// Kafka's authorization error and changes nothing.
type Security struct {
	users map[string]*user
	acls  []ACL
	super map[string]bool
	// secret derives the salts told for unknown users, and dummy is
	// what a PLAIN attempt of an unknown user is checked against: an
	// unknown name is answered as a known one, in the same time.
	secret []byte
	dummy  scramCreds
}

type user struct {
	name  string
	creds map[string]scramCreds // by mechanism
}

// scramCreds are a user's SCRAM credentials (RFC 5802): the password is
// not kept.
type scramCreds struct {
	salt       []byte
	iterations int
	storedKey  []byte
	serverKey  []byte
}

// ACL allows a principal operations on resources. Principal is
// "User:<name>" or "User:*". Resource is topic, group or transactional_id;
// Name is a resource name, or "*", matched literally or, with Prefix, as
// a prefix. Operations: read, write, describe, create, delete, alter
// (topic configs), all; read, write, delete and alter imply describe.
type ACL struct {
	Principal  string   `json:"principal"`
	Resource   string   `json:"resource"`
	Name       string   `json:"name"`
	Prefix     bool     `json:"prefix,omitempty"`
	Operations []string `json:"operations"`
}

// securityFile is the JSON form LoadSecurity reads.
type securityFile struct {
	Users []struct {
		Name     string `json:"name"`
		Password string `json:"password"`
	} `json:"users"`
	SuperUsers []string `json:"super_users"`
	ACLs       []ACL    `json:"acls"`
}

const scramIterations = 8192

var (
	resources  = map[string]bool{"topic": true, "group": true, "transactional_id": true}
	operations = map[string]bool{"read": true, "write": true, "describe": true, "create": true, "delete": true, "alter": true, "all": true}
)

// LoadSecurity reads users and ACLs from a JSON file:
//
//	{"users": [{"name": "alice", "password": "..."}],
//	 "super_users": ["admin"],
//	 "acls": [{"principal": "User:alice", "resource": "topic", "name": "orders",
//	           "operations": ["read", "write", "describe"]},
//	          {"principal": "User:alice", "resource": "group", "name": "billing", "operations": ["read"]}]}
//
// Passwords are turned into SCRAM credentials (a random salt each) when
// the file is read and not kept; the file must be readable only by the
// server's user, which LoadSecurity checks.
func LoadSecurity(path string) (*Security, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("broker: security file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("broker: security file %s holds passwords and is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("broker: security file: %w", err)
	}
	var f securityFile
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("broker: security file %s: %w", path, err)
	}
	s := NewSecurity()
	for i, u := range f.Users {
		if err := s.AddUser(u.Name, u.Password); err != nil {
			return nil, fmt.Errorf("broker: security file %s: user %d: %w", path, i, err)
		}
	}
	for _, su := range f.SuperUsers {
		if su == "" || strings.Contains(su, ":") {
			return nil, fmt.Errorf("broker: security file %s: super user %q: want a user name (without User:)", path, su)
		}
		s.super[su] = true
	}
	for i, a := range f.ACLs {
		if err := s.Allow(a); err != nil {
			return nil, fmt.Errorf("broker: security file %s: acl %d: %w", path, i, err)
		}
	}
	return s, nil
}

// NewSecurity returns a Security with no users and no ACLs (nothing is
// allowed); AddUser, AddSuperUser and Allow fill it.
func NewSecurity() *Security {
	s := &Security{users: map[string]*user{}, super: map[string]bool{}, secret: make([]byte, 32)}
	rand.Read(s.secret)
	salt := make([]byte, 16)
	rand.Read(salt)
	s.dummy, _ = deriveCreds(sha256.New, string(s.secret), salt, scramIterations)
	return s
}

// AddUser adds a user who authenticates with password (SASL PLAIN or
// SCRAM-SHA-256/512).
func (s *Security) AddUser(name, password string) error {
	switch {
	case name == "" || strings.ContainsAny(name, ",=\x00"):
		return fmt.Errorf("user name %q: want a non-empty name without ',', '=' or NUL", name)
	case password == "":
		return fmt.Errorf("user %q: empty password", name)
	case s.users[name] != nil:
		return fmt.Errorf("user %q named twice", name)
	}
	u := &user{name: name, creds: map[string]scramCreds{}}
	for mech, h := range scramHashes {
		salt := make([]byte, 16)
		rand.Read(salt)
		c, err := deriveCreds(h, password, salt, scramIterations)
		if err != nil {
			return err
		}
		u.creds[mech] = c
	}
	s.users[name] = u
	return nil
}

// AddSuperUser lets user do everything, whatever the ACLs.
func (s *Security) AddSuperUser(name string) { s.super[name] = true }

// Allow adds an ACL.
func (s *Security) Allow(a ACL) error {
	switch {
	case a.Principal != "User:*" && (!strings.HasPrefix(a.Principal, "User:") || len(a.Principal) == len("User:")):
		return fmt.Errorf("principal %q: want User:<name> or User:*", a.Principal)
	case !resources[a.Resource]:
		return fmt.Errorf("resource %q: want topic, group or transactional_id", a.Resource)
	case a.Name == "":
		return errors.New(`empty resource name: name one, or "*" for all`)
	case len(a.Operations) == 0:
		return errors.New("no operations")
	}
	for _, op := range a.Operations {
		if !operations[op] {
			return fmt.Errorf("operation %q: want read, write, describe, create, delete or all", op)
		}
	}
	s.acls = append(s.acls, a)
	return nil
}

// allowed reports whether principal ("User:name") may do op on the named
// resource. Describe is implied by read, write and delete, as in Kafka.
func (s *Security) allowed(principal, resource, name, op string) bool {
	if s.super[strings.TrimPrefix(principal, "User:")] {
		return true
	}
	for _, a := range s.acls {
		if a.Principal != principal && a.Principal != "User:*" || a.Resource != resource {
			continue
		}
		if !(a.Name == "*" || a.Name == name || a.Prefix && strings.HasPrefix(name, a.Name)) {
			continue
		}
		for _, o := range a.Operations {
			if o == op || o == "all" || op == "describe" && (o == "read" || o == "write" || o == "delete" || o == "alter") {
				return true
			}
		}
	}
	return false
}

// anyWrite reports whether principal may write some topic (what an
// idempotent producer's InitProducerId needs, as Kafka's IdempotentWrite).
func (s *Security) anyWrite(principal string) bool {
	if s.super[strings.TrimPrefix(principal, "User:")] {
		return true
	}
	for _, a := range s.acls {
		if (a.Principal == principal || a.Principal == "User:*") && a.Resource == "topic" {
			for _, o := range a.Operations {
				if o == "write" || o == "all" {
					return true
				}
			}
		}
	}
	return false
}

var scramHashes = map[string]func() hash.Hash{"SCRAM-SHA-256": sha256.New, "SCRAM-SHA-512": sha512.New}

func deriveCreds(h func() hash.Hash, password string, salt []byte, iterations int) (scramCreds, error) {
	salted, err := pbkdf2.Key(h, password, salt, iterations, h().Size())
	if err != nil {
		return scramCreds{}, err
	}
	clientKey := hmacOf(h, salted, "Client Key")
	stored := h()
	stored.Write(clientKey)
	return scramCreds{salt: salt, iterations: iterations, storedKey: stored.Sum(nil), serverKey: hmacOf(h, salted, "Server Key")}, nil
}

func hmacOf(h func() hash.Hash, key []byte, msg string) []byte {
	m := hmac.New(h, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// mechanisms are the SASL mechanisms served.
var mechanisms = []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}

// saslState is a connection's authentication in progress.
type saslState struct {
	mech string
	step int
	// SCRAM: the client's first message without its GS2 header, the
	// server's first message, the user.
	gs2, clientFirstBare, serverFirst, nonce string
	user                                     *user
}

// plain checks a SASL PLAIN message ("authzid NUL user NUL password") and
// returns the user.
func (s *Security) plain(msg []byte) (string, error) {
	parts := strings.Split(string(msg), "\x00")
	if len(parts) != 3 {
		return "", errors.New("PLAIN: malformed message")
	}
	authz, name, password := parts[0], parts[1], parts[2]
	if authz != "" && authz != name {
		return "", errors.New("PLAIN: authorization ID differs from the user")
	}
	u := s.users[name]
	c := s.dummy
	if u != nil {
		c = u.creds["SCRAM-SHA-256"]
	}
	got, err := deriveCreds(sha256.New, password, c.salt, c.iterations)
	if err != nil || u == nil || !hmac.Equal(got.storedKey, c.storedKey) {
		return "", errors.New("invalid user name or password")
	}
	return name, nil
}

// scramStep answers one SCRAM message: the server-first message for the
// client-first, then the server-final for the client-final, with the
// authenticated user.
func (s *Security) scramStep(st *saslState, msg []byte) (reply []byte, authed string, err error) {
	h := scramHashes[st.mech]
	switch st.step {
	case 0:
		m := string(msg)
		// GS2 header: "n,," or "y,," (no channel binding), or with an
		// authorization ID "n,a=ID,".
		if !strings.HasPrefix(m, "n,") && !strings.HasPrefix(m, "y,") {
			return nil, "", errors.New("SCRAM: channel binding is not served")
		}
		rest := m[2:]
		i := strings.IndexByte(rest, ',')
		if i < 0 {
			return nil, "", errors.New("SCRAM: malformed client-first message")
		}
		st.gs2 = m[:2+i+1]
		authz := rest[:i]
		st.clientFirstBare = rest[i+1:]
		attrs := scramAttrs(st.clientFirstBare)
		name, cnonce := unescapeSASLName(attrs["n"]), attrs["r"]
		if name == "" || cnonce == "" {
			return nil, "", errors.New("SCRAM: client-first message without user or nonce")
		}
		if authz != "" && unescapeSASLName(strings.TrimPrefix(authz, "a=")) != name {
			return nil, "", errors.New("SCRAM: an authorization ID other than the user is not served")
		}
		u := s.users[name]
		var c scramCreds
		if u == nil {
			// Answer as for a user, with a salt of its own derived from
			// the name, so a client cannot tell which names exist; the
			// proof will fail.
			c = scramCreds{salt: hmacOf(sha256.New, s.secret, st.mech+"\x00"+name)[:16], iterations: scramIterations}
		} else {
			c = u.creds[st.mech]
		}
		b := make([]byte, 18)
		rand.Read(b)
		st.nonce = cnonce + base64.RawStdEncoding.EncodeToString(b)
		st.serverFirst = fmt.Sprintf("r=%s,s=%s,i=%d", st.nonce, base64.StdEncoding.EncodeToString(c.salt), c.iterations)
		st.user = u
		st.step = 1
		return []byte(st.serverFirst), "", nil
	case 1:
		m := string(msg)
		i := strings.LastIndex(m, ",p=")
		if i < 0 {
			return nil, "", errors.New("SCRAM: client-final message without proof")
		}
		withoutProof := m[:i]
		attrs := scramAttrs(m)
		if attrs["r"] != st.nonce {
			return nil, "", errors.New("SCRAM: nonce mismatch")
		}
		if attrs["c"] != base64.StdEncoding.EncodeToString([]byte(st.gs2)) {
			return nil, "", errors.New("SCRAM: channel binding differs from the first message's")
		}
		proof, err := base64.StdEncoding.DecodeString(attrs["p"])
		if err != nil || st.user == nil {
			return nil, "", errors.New("invalid user name or password")
		}
		c := st.user.creds[st.mech]
		auth := st.clientFirstBare + "," + st.serverFirst + "," + withoutProof
		sig := hmacOf(h, c.storedKey, auth)
		if len(proof) != len(sig) {
			return nil, "", errors.New("invalid user name or password")
		}
		clientKey := make([]byte, len(sig))
		for i := range sig {
			clientKey[i] = proof[i] ^ sig[i]
		}
		stored := h()
		stored.Write(clientKey)
		if !hmac.Equal(stored.Sum(nil), c.storedKey) {
			return nil, "", errors.New("invalid user name or password")
		}
		st.step = 2
		return []byte("v=" + base64.StdEncoding.EncodeToString(hmacOf(h, c.serverKey, auth))), st.user.name, nil
	}
	return nil, "", errors.New("SCRAM: exchange already complete")
}

func scramAttrs(m string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(m, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && len(k) == 1 {
			out[k] = v
		}
	}
	return out
}

func unescapeSASLName(n string) string {
	return strings.NewReplacer("=2C", ",", "=3D", "=").Replace(n)
}
