// `ambit completion bash|zsh`: a completion script made from the command tree itself, so that it can never
// lag behind the commands. zsh loads the bash one through bashcompinit, as zsh documents for such scripts.
import { Argument, type Command } from 'commander';
import type { Io } from '../context.js';

/** Per command path ('' for the top, 'policy deny' for a subcommand): the words that may follow it. */
export function completionWords(program: Command): Map<string, string[]> {
  const global = program.options.map((o) => o.long).filter((l): l is string => l !== undefined);
  const out = new Map<string, string[]>();
  const walk = (cmd: Command, path: string): void => {
    const subs = cmd.commands.map((c) => c.name()).filter((n) => n !== 'help');
    const own =
      cmd === program ? [] : cmd.options.map((o) => o.long).filter((l): l is string => l !== undefined);
    out.set(path, [...subs, ...own, ...global, '--help']);
    for (const c of cmd.commands) if (c.name() !== 'help') walk(c, path ? `${path} ${c.name()}` : c.name());
  };
  walk(program, '');
  return out;
}

/** The bash script: `_ambit` finds the command path typed so far and offers what may follow it. */
export function bashCompletion(program: Command): string {
  const cases = [...completionWords(program)]
    .map(([path, words]) => `    '${path}') echo '${words.join(' ')}' ;;`)
    .join('\n');
  return `# bash completion for ambit; made by \`ambit completion bash\`
_ambit_words() {
  case "$1" in
${cases}
  esac
}
_ambit() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" i w
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$w" in -*) continue ;; esac
    # Only a subcommand of the path so far extends it: an option's value does not.
    case " $(_ambit_words "$path") " in *" $w "*) path="\${path:+$path }$w" ;; esac
  done
  COMPREPLY=($(compgen -W "$(_ambit_words "$path")" -- "$cur"))
}
complete -F _ambit ambit
`;
}

export function zshCompletion(program: Command): string {
  return `# zsh completion for ambit; made by \`ambit completion zsh\` (the bash one, through bashcompinit)
autoload -U +X bashcompinit && bashcompinit
${bashCompletion(program).split('\n').slice(1).join('\n')}`;
}

export function registerCompletion(program: Command, io: Io): void {
  program
    .command('completion')
    .description(
      'Print a shell completion script: `source <(ambit completion bash)`, or in ~/.zshrc\n' +
        '`source <(ambit completion zsh)`.',
    )
    .addArgument(new Argument('<shell>', 'the shell').choices(['bash', 'zsh']))
    .action((shell: 'bash' | 'zsh') => {
      io.out(shell === 'bash' ? bashCompletion(program) : zshCompletion(program));
    });
}
