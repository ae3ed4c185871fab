import { type Logger as PinoLogger, destination, pino, stdTimeFunctions } from 'pino';

export type Logger = PinoLogger;
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/** JSON lines on stdout (or the given fd); never a token or a private key in any field. */
export function createLogger(level: LogLevel = 'info', fd = 1): Logger {
  return pino(
    {
      level,
      base: { svc: 'ambitd' },
      timestamp: stdTimeFunctions.isoTime,
      redact: { paths: ['token', '*.token', 'key', '*.keyPem', 'keyPem'], censor: '[redacted]' },
    },
    destination({ fd, sync: false }),
  );
}

/** A logger that drops everything at no cost, for library use and tests that do not read logs. */
export const silentLogger = (): Logger => pino({ level: 'silent' });
