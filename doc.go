// Package ferry is a toolkit for message-driven systems that must not lose,
// duplicate or reorder work when things fail.
//
// This root package holds what every other package shares: the message
// envelope ([Message]), the standard header names (named after CloudEvents
// attributes so events cross to other systems without mapping), the error
// helpers that let handlers steer retries ([Permanent], [RetryAfter]) and the
// sentinel errors callers branch on with errors.Is.
//
// The embedded durable log lives in package commitlog.
package ferry
