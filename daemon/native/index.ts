// The one door to the native binding (native/src): everything in the daemon that calls it imports from here.
//   addon.ts    the typed surface: every call the binding exports
//   codes.ts    the events, stream codes, reasons and option order shared with C (generated from codes.h)
//   load.ts     finding and loading the built addon, once
//   binding.ts  the addon initialised for connections (dispatcher and read slab)
export type { Addon, NativeHandle, TlsContextOptions } from './addon.js';
export { type NativeOwner, binding, slab } from './binding.js';
export * from './codes.js';
export { addon, fdOf } from './load.js';
