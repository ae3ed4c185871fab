{
  "targets": [
    {
      "target_name": "ambit_native",
      "sources": ["src/ambit_native.c", "src/tls.c", "src/record.c", "src/h2.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-fvisibility=hidden"]
    }
  ]
}
