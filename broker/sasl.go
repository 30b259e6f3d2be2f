package broker

import (
	"slices"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The SASL requests run in the connection's reader: the next request is
// read only once the connection's authentication state is set.

func handleSASLHandshake(r *request, reply func(kmsg.Response)) {
	req := r.body.(*kmsg.SASLHandshakeRequest)
	resp := kmsg.NewPtrSASLHandshakeResponse()
	resp.SupportedMechanisms = mechanisms
	c := r.c
	switch {
	case c.s.cfg.security == nil:
		resp.ErrorCode = kerr.IllegalSaslState.Code // nothing to authenticate to
	case c.principal != "" || c.sasl != nil:
		resp.ErrorCode = kerr.IllegalSaslState.Code
	case !slices.Contains(mechanisms, req.Mechanism):
		resp.ErrorCode = kerr.UnsupportedSaslMechanism.Code
	default:
		c.sasl = &saslState{mech: req.Mechanism}
	}
	reply(resp)
}

func handleSASLAuthenticate(r *request, reply func(kmsg.Response)) {
	req := r.body.(*kmsg.SASLAuthenticateRequest)
	resp := kmsg.NewPtrSASLAuthenticateResponse()
	c := r.c
	sec := c.s.cfg.security
	if sec == nil || c.sasl == nil {
		resp.ErrorCode, resp.ErrorMessage = kerr.IllegalSaslState.Code, kmsg.StringPtr("SaslHandshake first")
		c.closeAfter = true
		reply(resp)
		return
	}
	var name string
	var err error
	if c.sasl.mech == "PLAIN" {
		name, err = sec.plain(req.SASLAuthBytes)
	} else {
		resp.SASLAuthBytes, name, err = sec.scramStep(c.sasl, req.SASLAuthBytes)
	}
	switch {
	case err != nil:
		c.s.cfg.logger.Warn("authentication failed", "remote", c.remote, "mechanism", c.sasl.mech, "reason", err.Error())
		resp.ErrorCode, resp.ErrorMessage = kerr.SaslAuthenticationFailed.Code, kmsg.StringPtr("authentication failed: "+err.Error())
		resp.SASLAuthBytes = nil
		c.closeAfter = true
	case name != "":
		c.principal = "User:" + name
		c.sasl = nil
		c.s.cfg.logger.Info("authenticated", "remote", c.remote, "user", name)
	}
	reply(resp)
}

// may reports whether the request's principal may do op on the resource
// (always, without security).
func (r *request) may(resource, name, op string) bool {
	sec := r.c.s.cfg.security
	return sec == nil || sec.allowed(r.c.principal, resource, name, op)
}
