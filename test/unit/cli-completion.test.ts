// `ambit completion`: the scripts come from the command tree, and real bash completes with them.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import test from 'ava';
import { buildProgram } from '../../agent-cli/cli.js';
import { bashCompletion, completionWords, zshCompletion } from '../../agent-cli/commands/completion.js';

const program = buildProgram({ out: () => {}, err: () => {} });

test('every command and subcommand has its words: subcommands, its own options, the global ones', (t) => {
  const words = completionWords(program);
  t.true(words.get('')!.includes('policy'));
  t.true(words.get('')!.includes('status'));
  t.true(words.get('')!.includes('--state-dir'));
  t.deepEqual(
    ['allow', 'deny', 'list', 'remove', 'default'].filter((w) => !words.get('policy')!.includes(w)),
    [],
  );
  t.true(words.get('policy deny')!.includes('--from'));
  t.true(words.get('status')!.includes('--json'));
  t.false(words.has('help'), 'commander help is not a command of its own here');
  t.regex(
    zshCompletion(program),
    /^# zsh completion[^\n]*\nautoload -U \+X bashcompinit && bashcompinit\n_ambit_words\(\)/,
  );
});

const bash = existsSync('/bin/bash') ? test : test.skip;
/** What bash's completion offers after typing `line` (the cursor at its end). */
function complete(line: string): string[] {
  const words = line.split(' ');
  const script = `${bashCompletion(program)}
COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}
_ambit; printf '%s\\n' "\${COMPREPLY[@]}"`;
  return execFileSync('/bin/bash', ['-c', script], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

bash('bash completes commands, subcommands and options by what was typed before', (t) => {
  t.deepEqual(complete('ambit pol'), ['policy']);
  t.deepEqual(complete('ambit policy d').sort(), ['default', 'deny']);
  t.true(complete('ambit policy deny --').includes('--from'));
  // An option's value in between does not lose the path.
  t.deepEqual(complete('ambit --admin 127.0.0.1:15000 st'), ['status']);
  t.deepEqual(complete('ambit status --j'), ['--json']);
});
