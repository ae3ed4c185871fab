// The V8 flags ambitd runs with (systemd unit, Dockerfile, npm start, bench, demo; test/deploy.test.ts keeps
// them in step). Every chunk the data path carries is a Buffer whose memory lives outside the JS heap; with
// V8's default limits that churn forces a full mark-compact about every 25 MB carried, the largest avoidable
// cost in a profile of a 1 GiB transfer (about 15% of each daemon's CPU). A larger young generation lets
// buffers die young, and a larger initial old-space limit spaces full collections out (none in 1 GiB).
// Heap limits are fixed when the isolate is created, so they must be on the command line.
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=64', '--initial-old-space-size=256'];
