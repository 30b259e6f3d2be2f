package broker

import (
	"testing"
	"time"
)

// A transaction's timeout timer that fired while EndTxn held the lock
// (its callback waiting for ts.mu) later finds the producer's *next*
// transaction open at the same epoch and aborts it, fencing the producer:
// the callback tells transactions apart by epoch only, and EndTxn does not
// bump the epoch. Simulated deterministically: the lock is held across the
// timer's expiry, as a slow EndTxn (or a descheduled timer goroutine)
// does.
func TestReview6StaleTimeoutAbortsTheNextTransaction(t *testing.T) {
	ts := newTxns(1 << 20)
	x := &txn{id: "tx", pid: 1, timeout: 20 * time.Millisecond}
	x.resetLocked()
	ts.byID["tx"], ts.byPID[1] = x, x
	logf := func(string, ...any) {}

	ts.mu.Lock()
	ts.beginLocked(x, logf) // transaction 1, 20 ms timeout
	ts.mu.Unlock()
	time.Sleep(10 * time.Millisecond)

	ts.mu.Lock()                      // EndTxn takes the lock...
	time.Sleep(30 * time.Millisecond) // ...while the timer fires and waits for it
	x.resetLocked()                   // EndTxn ends transaction 1 (timer.Stop is too late)
	x.timeout = time.Hour             // transaction 2 has all the time it wants
	ts.beginLocked(x, logf)           // the producer's next AddPartitionsToTxn
	x.parts[tpKey{"t", 0}] = true
	ts.mu.Unlock()

	time.Sleep(20 * time.Millisecond)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if !x.open || x.epoch != 0 {
		t.Errorf("transaction 2 (1 h timeout, 20 ms old) was aborted by transaction 1's timer: open %v, epoch %d (the producer is fenced)", x.open, x.epoch)
	}
}
