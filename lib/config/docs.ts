import {
  SECTIONS,
  SETTINGS,
  type Setting,
  type SettingKey,
  envName,
  optionOf,
  shownDefault,
} from './schema.js';

const byKey = SETTINGS as Record<SettingKey, Setting<unknown, unknown>>;

/** The line that ends the hand-written head of docs/configuration.md; everything after it is generated. */
export const GENERATED_MARKER =
  '<!-- Generated from lib/config/schema.ts by `npm run docs:config`: edit the head above, not below. -->';

/** A flag's text in `ambitd --help`. */
export function flagHelp(k: SettingKey): string {
  const s: Setting<unknown, unknown> = byKey[k];
  const notes: string[] = [];
  const dflt = shownDefault(k);
  if (dflt !== undefined) notes.push(`default: ${dflt}`);
  if (optionOf(k).startsWith('--no-')) notes.push('this flag turns it off');
  if (s.consulEnv) notes.push(`env ${envName(k)} or ${s.consulEnv}`);
  return notes.length ? `${s.help} (${notes.join('; ')})` : s.help;
}

/** A table cell: GitHub splits cells at every `|`, in code spans too, unless escaped. */
const cell = (s: string): string => s.replaceAll('|', '\\|');
const code = (s: string): string => cell(`\`${s}\``);
/** Prose in a cell: `<stateDir>` would be taken for an HTML tag. */
const prose = (s: string): string => cell(s).replaceAll('<', '&lt;');

function defaultCell(k: SettingKey): string {
  const s = byKey[k];
  const d = shownDefault(k);
  if (d === undefined) return 'none';
  // A computed default is a sentence; a literal one is a value, shown as code.
  return s.shown === undefined ? code(d) : prose(d);
}

/** The generated part: one table per section of the schema. */
export function settingsTables(): string {
  const out: string[] = [];
  for (const section of SECTIONS) {
    out.push(`### ${section.title}`, '');
    out.push('| key | flag | environment variable | default | meaning |', '| --- | --- | --- | --- | --- |');
    for (const k of Object.keys(section.settings) as SettingKey[]) {
      const s = byKey[k];
      const vars = [envName(k), ...(s.consulEnv ? [s.consulEnv] : [])].map(code).join(', ');
      out.push(`| ${code(k)} | ${code(optionOf(k))} | ${vars} | ${defaultCell(k)} | ${prose(s.help)} |`);
    }
    out.push('');
  }
  return out.join('\n');
}

/** docs/configuration.md: the hand-written head of `current` (up to the marker), then the tables. */
export function configurationDoc(current: string): string {
  const i = current.indexOf(GENERATED_MARKER);
  const head = i < 0 ? `${current.trimEnd()}\n\n` : current.slice(0, i);
  return `${head}${GENERATED_MARKER}\n\n${settingsTables()}`;
}
