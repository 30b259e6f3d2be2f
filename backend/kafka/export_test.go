package kafka

// SetAfterTxnProduce installs a function run inside every transaction
// after its records are acknowledged and before it commits (for crash
// tests).
func SetAfterTxnProduce(b *Backend, f func()) { b.afterTxnProduce = f }
