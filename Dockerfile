# The image the Kubernetes DaemonSet runs (deploy/kubernetes/): docker build -t ambit:0.1.0 .
# Built from npm ci's output (package-lock.json), so the same lock file gives the same modules.

FROM node:20-bookworm-slim AS build
# python3, make, g++: node-gyp for the native binding; libnghttp2-dev: nghttp2's header only (the binding
# calls the nghttp2 and OpenSSL inside Node).
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore keeps out the tests, the bench, node_modules and any binding built on the host.
COPY . .
# npm ci runs the package's install script: the binding, built here for this image's Node.
RUN npm ci --no-audit --no-fund \
 && npx tsc -p tsconfig.json \
 && npm prune --omit=dev --no-audit --no-fund \
 && rm -rf dist/test dist/bench dist/examples \
 && chmod 0755 dist/daemon/main.js dist/agent-cli/main.js

FROM node:20-bookworm-slim
# iptables and iproute2: what `ambit capture install` and ambitd run for the capture rules.
RUN apt-get update && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ambit
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The native binding (the tunnel's TLS, capture's socket options), found through native/binding.gyp.
COPY --from=build /src/native/binding.gyp ./native/binding.gyp
COPY --from=build /src/native/build/Release/ambit_native.node ./native/build/Release/ambit_native.node
RUN ln -s /opt/ambit/dist/agent-cli/main.js /usr/local/bin/ambit \
 && ln -s /opt/ambit/dist/daemon/main.js /usr/local/bin/ambitd \
 && mkdir -p /var/lib/ambit && chown 65532:65532 /var/lib/ambit
ENV AMBIT_STATE_DIR=/var/lib/ambit
# Non-root by default. The DaemonSet runs its containers as uid 0 with NET_ADMIN and NET_RAW only, for
# capture (see deploy/kubernetes/base/daemonset.yaml); without capture this user is enough.
USER 65532:65532
EXPOSE 15008 15020 15021
ENTRYPOINT ["node", "--initial-old-space-size=64", "/opt/ambit/dist/daemon/main.js"]
