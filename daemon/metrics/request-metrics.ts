// Istio's four request metrics, kept per label set and shown through prom-client's registry. prom-client
// hashes every label of every observation (26 labels, four metrics, each request): at the waypoint that was
// a tenth of its CPU per request. Label sets here are frozen objects shared by all requests alike
// (waypoint/telemetry.ts), so a request finds its series by identity and adds to plain numbers; the work
// of exposition is done at scrape time, in the shape prom-client's own Counter and Histogram give, so that
// the registry, its text format and the workers' aggregation treat them as theirs.
import type { Registry } from 'prom-client';

interface Series {
  readonly labels: Readonly<Record<string, string>>;
  count: number;
  readonly hists: [Histo, Histo, Histo];
}

interface Histo {
  readonly buckets: Float64Array;
  sum: number;
}

interface Value {
  readonly labels: Record<string, string | number>;
  readonly value: number;
  readonly metricName?: string;
}

interface MetricJson {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'histogram';
  readonly values: Value[];
  readonly aggregator: 'sum';
}

export interface RequestMetricNames {
  readonly total: { readonly name: string; readonly help: string };
  /** Duration, request bytes, response bytes. */
  readonly histograms: readonly [
    { readonly name: string; readonly help: string },
    { readonly name: string; readonly help: string },
    { readonly name: string; readonly help: string },
  ];
}

const MAX_OBJECTS = 20_000;

/** `L`: the label set's shape; every field a string. */
export class RequestMetrics<L extends { readonly [K in keyof L]: string }> {
  readonly #bounds: readonly number[];
  readonly #byObject = new Map<L, Series>();
  /** The same label values in another object (a label cache that was emptied): one series still. */
  readonly #byKey = new Map<string, Series>();

  constructor(names: RequestMetricNames, bounds: readonly number[], registers: readonly Registry[]) {
    this.#bounds = bounds;
    const metrics = [
      this.#metric(names.total.name, names.total.help, 'counter', -1),
      ...names.histograms.map((h, i) => this.#metric(h.name, h.help, 'histogram', i)),
    ];
    for (const r of registers) for (const m of metrics) r.registerMetric(m as never);
  }

  /** One request: counted, its duration and body sizes observed. */
  record(labels: L, durationMs: number, requestBytes: number, responseBytes: number): void {
    let s = this.#byObject.get(labels);
    if (s === undefined) {
      // Bounded by the label sets alive in the cache that makes them; old objects are looked up again by key.
      if (this.#byObject.size >= MAX_OBJECTS) this.#byObject.clear();
      s = this.#series(labels);
    }
    s.count++;
    this.#observe(s.hists[0], durationMs);
    this.#observe(s.hists[1], requestBytes);
    this.#observe(s.hists[2], responseBytes);
  }

  #observe(h: Histo, v: number): void {
    h.sum += v;
    const b = this.#bounds;
    // Per bucket here, cumulative at scrape time: one add per observation.
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    h.buckets[i]!++;
  }

  #series(labels: L): Series {
    const key = JSON.stringify(labels);
    let s = this.#byKey.get(key);
    if (!s) {
      const n = this.#bounds.length + 1;
      const histo = (): Histo => ({ buckets: new Float64Array(n), sum: 0 });
      s = {
        labels: labels as Readonly<Record<string, string>>,
        count: 0,
        hists: [histo(), histo(), histo()],
      };
      this.#byKey.set(key, s);
    }
    this.#byObject.set(labels, s);
    return s;
  }

  #metric(name: string, help: string, type: 'counter' | 'histogram', hist: number) {
    const get = (): MetricJson => ({ name, help, type, values: this.#values(name, hist), aggregator: 'sum' });
    return {
      name,
      help,
      type,
      aggregator: 'sum' as const,
      collect: undefined,
      get: async () => get(),
      reset: () => this.#reset(),
    };
  }

  #values(name: string, hist: number): Value[] {
    const out: Value[] = [];
    for (const s of this.#byKey.values()) {
      if (hist < 0) {
        out.push({ labels: { ...s.labels }, value: s.count });
        continue;
      }
      const h = s.hists[hist]!;
      let acc = 0;
      for (let i = 0; i < this.#bounds.length; i++) {
        acc += h.buckets[i]!;
        out.push({ labels: { le: this.#bounds[i]!, ...s.labels }, value: acc, metricName: `${name}_bucket` });
      }
      acc += h.buckets[this.#bounds.length]!;
      out.push({ labels: { le: '+Inf', ...s.labels }, value: acc, metricName: `${name}_bucket` });
      out.push({ labels: { ...s.labels }, value: h.sum, metricName: `${name}_sum` });
      out.push({ labels: { ...s.labels }, value: s.count, metricName: `${name}_count` });
    }
    return out;
  }

  #reset(): void {
    this.#byObject.clear();
    this.#byKey.clear();
  }
}
