package consumer

// BenchConsume is benchConsume for benchmarks in package consumer_test.
var BenchConsume = benchConsume
