# The image the Kubernetes DaemonSet runs: docker build -t ambit:0.1.0 .
FROM node:20-bookworm-slim AS build
# libnghttp2-dev: nghttp2's header; the binding calls the nghttp2 inside Node.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ libnghttp2-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
COPY . .
RUN npm ci --no-audit --no-fund && npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iptables iproute2 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ambit
COPY --from=build /src/dist ./dist
# The native binding (the tunnel's TLS, capture's socket options), found through native/binding.gyp.
COPY --from=build /src/native/binding.gyp ./native/binding.gyp
COPY --from=build /src/native/build/Release/ambit_native.node ./native/build/Release/ambit_native.node
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/package.json ./
ENV AMBIT_STATE_DIR=/var/lib/ambit
EXPOSE 15008 15020 15021
ENTRYPOINT ["node", "--initial-old-space-size=64", "/opt/ambit/dist/daemon/main.js"]
