{
  "targets": [
    {
      "target_name": "ambit_native",
      "sources": ["src/ambit_native.c", "src/tls.c", "src/record.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
