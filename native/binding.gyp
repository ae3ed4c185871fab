# nghttp2 (h2.c): compiled against Debian's headers (libnghttp2-dev, in the default /usr/include) and not
# linked with -lnghttp2: its symbols resolve at load time to the copy inside Node's own binary.
{
  "targets": [
    {
      "target_name": "ambit_native",
      "sources": [
        "src/ambit_native.c",
        "src/napi_conn.c",
        "src/napi_h2.c",
        "src/conn.c",
        "src/tls.c",
        "src/tls_records.c",
        "src/record.c",
        "src/h2.c"
      ],
      "cflags": ["-Wall", "-Wextra", "-O2", "-fvisibility=hidden"]
    }
  ]
}
