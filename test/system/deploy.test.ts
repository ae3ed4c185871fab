import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { NODE_FLAGS } from '../../daemon/proxy/reclaim.js';
import { CONFIG_KEYS, envName, loadConfig } from '../../lib/config.js';
import { ROOT } from '../helpers/paths.js';

// The deployment artifacts are checked against the daemon they deploy: the settings they pass must load,
// and the ports and paths they name must be the ones ambitd serves.

const root = ROOT;
const run = promisify(execFile);

interface K8sObject {
  kind: string;
  metadata: { name: string };
  data?: Record<string, string>;
  spec?: {
    template: {
      spec: {
        hostNetwork: boolean;
        terminationGracePeriodSeconds: number;
        containers: {
          ports: { containerPort: number; name: string }[];
          readinessProbe: { httpGet: { path: string; port: number } };
          env: { name: string }[];
        }[];
      };
    };
  };
}

test('the Kubernetes DaemonSet runs on the host network with the ports and probe ambitd serves', (t) => {
  const docs = parseAllDocuments(readFileSync(join(root, 'deploy/kubernetes/ambitd.yaml'), 'utf8')).map(
    (d) => d.toJS() as K8sObject,
  );
  const ds = docs.find((d) => d.kind === 'DaemonSet');
  const cm = docs.find((d) => d.kind === 'ConfigMap');
  t.truthy(ds?.spec && cm?.data);
  const pod = ds!.spec!.template.spec;
  const c = pod.containers[0]!;
  const config = loadConfig({ env: {}, flags: { stateDir: '/nonexistent' } });
  t.true(pod.hostNetwork);
  t.deepEqual(
    c.ports.map((p) => p.containerPort).sort(),
    [config.tunnel.port, config.metrics.port, config.ready.port].sort(),
  );
  t.is(c.readinessProbe.httpGet.path, '/healthz/ready');
  t.is(c.readinessProbe.httpGet.port, config.ready.port);
  // The ConfigMap's settings load, and the grace period outlasts the drain.
  const settings = parseYaml(cm!.data!['ambitd.yaml']!) as Record<string, string>;
  const fromMap = loadConfig({ env: {}, flags: { ...settings, stateDir: '/nonexistent' } });
  t.true(pod.terminationGracePeriodSeconds * 1000 > fromMap.drainMs);
  // Every AMBIT_ variable it sets is one ambitd reads.
  const known = new Set([...CONFIG_KEYS.map(envName), 'AMBIT_CONFIG', 'AMBIT_STATE_DIR']);
  for (const e of c.env) t.true(known.has(e.name), `${e.name} is not a setting of ambitd`);
});

test('the systemd unit passes systemd-analyze verify and starts the built daemon', async (t) => {
  const unit = readFileSync(join(root, 'systemd/ambitd.service'), 'utf8');
  // The node flags the daemon is tuned for (daemon/proxy/reclaim.ts), in every launcher.
  const flags = NODE_FLAGS.join(' ');
  t.true(unit.includes(`\nExecStart=/usr/bin/node ${flags} /opt/ambit/dist/daemon/main.js\n`));
  const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8');
  t.true(dockerfile.includes(`ENTRYPOINT ["node", ${NODE_FLAGS.map((f) => `"${f}"`).join(', ')}, `));
  // The daemon cannot run without its native binding: the image carries it where the loader looks.
  t.true(dockerfile.includes('./native/build/Release/ambit_native.node'));
  t.true(dockerfile.includes('./native/binding.gyp'));
  t.true(readFileSync(join(root, 'daemon/main.ts'), 'utf8').startsWith(`#!/usr/bin/env -S node ${flags}\n`));
  t.true(existsSync(join(root, 'dist/daemon/main.js')));
  if (!existsSync('/usr/bin/systemd-analyze') || !existsSync('/usr/bin/node')) {
    t.log('systemd-analyze or /usr/bin/node missing: only the static checks ran');
    return;
  }
  const { stderr } = await run('systemd-analyze', ['verify', join(root, 'systemd/ambitd.service')]).catch(
    (err: { stderr: string }) => ({ stderr: err.stderr }),
  );
  t.is(stderr.trim(), '');
});

test('the Ansible role templates only settings that ambitd knows', (t) => {
  const template = readFileSync(join(root, 'ansible/roles/ambit/templates/ambitd.yaml.j2'), 'utf8');
  const keys = [...template.matchAll(/^([a-zA-Z]+):/gm)].map((m) => m[1]!);
  t.true(keys.length >= 4);
  for (const k of keys)
    t.true((CONFIG_KEYS as readonly string[]).includes(k), `${k} is not a setting of ambitd`);
});
