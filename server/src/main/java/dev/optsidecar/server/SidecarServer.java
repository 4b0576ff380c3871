package dev.optsidecar.server;

import dev.optsidecar.server.observe.LogEvent;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.server.api.OptimizerService;
import dev.optsidecar.server.api.Statuses;
import dev.optsidecar.server.auth.TokenAuthority;
import dev.optsidecar.server.auth.TokenCheck;
import dev.optsidecar.server.shm.Doorbell;
import dev.optsidecar.server.shm.SegmentHandoff;
import dev.optsidecar.server.shm.SegmentSweeper;
import dev.optsidecar.server.shm.SharedMemory;
import dev.optsidecar.server.api.UnparsableRequests;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.model.Limits;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.StepAssembly;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerBuilder;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.protobuf.services.HealthStatusManager;
import io.grpc.protobuf.services.ProtoReflectionService;
import io.grpc.protobuf.services.ProtoReflectionServiceV1;

import java.io.IOException;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.logging.Logger;

/**
 * The gRPC server: the Optimizer service, health and reflection, on the transport it is handed
 * (Main: Netty on a socket, see {@link SocketServer}; tests also in-process), applying steps on
 * the engine it is handed. The engine and the transport stay their maker's to close; the server's
 * own background threads ({@link ServerThreads}) stop when it closes.
 */
public final class SidecarServer implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(SidecarServer.class.getName());
    /** Room for one chunk and its header, with margin; no message needs more. */
    static final int MAX_MESSAGE_BYTES = 4 * StepAssembly.MAX_CHUNK_BYTES;

    /** One gRPC server per listening transport (TCP, a Unix socket), all serving the same services. */
    private final List<Server> servers = new java.util.ArrayList<>();
    /** The first {@code apiServers} of {@link #servers} serve the API; the rest only health. */
    private int apiServers;
    private final ServerThreads threads = new ServerThreads();
    private final HealthStatusManager health = new HealthStatusManager();
    private final ModelRegistry registry;
    private final Persistence persistence;
    private final OptimizerService service;
    /** The doorbell socket in --shm-dir; null without shared memory or when it could not be bound. */
    private final Doorbell doorbell;
    /** The socket sealed segments are handed over on; null without shared memory or where they cannot work. */
    private final SegmentHandoff segmentHandoff;
    /** False until startup's restores are done: until then Optimizer calls are refused with UNAVAILABLE. */
    private volatile boolean serving;

    private SidecarServer(Endpoints endpoints, Engine engine, long memoryLimit,
                          Persistence.Options durability, Limits limits, SharedMemory shm) throws IOException {
        registry = new ModelRegistry(engine, memoryLimit, threads.timers, limits);
        try {
            persistence = durability == null ? null : new Persistence(registry, durability, threads.snapshots);
            if (persistence != null) {
                // An expired model is deleted like a Delete: `--restore latest` must not bring it back.
                registry.onLeaseExpired(persistence::deleted);
            }
        } catch (IOException | RuntimeException e) {
            threads.close();
            throw e;
        }
        doorbell = openDoorbell(shm);
        segmentHandoff = openSegmentHandoff(shm);
        service = new OptimizerService(registry, persistence, threads.completions, shm, doorbell);
        SegmentSweeper.schedule(shm, limits.idleStreamTimeout(), threads.timers);
        var guarded = UnparsableRequests.invalidArgument(service.bindService());
        if (endpoints.tokens() != null) {
            guarded = ServerInterceptors.intercept(guarded, new TokenCheck(endpoints.tokens()));
        }
        var optimizer = ServerInterceptors.intercept(guarded, new RefuseUntilServing());
        for (ServerBuilder<?> transport : endpoints.api()) {
            transport.addService(optimizer).addService(health.getHealthService());
            if (endpoints.reflection()) {
                transport.addService(ProtoReflectionServiceV1.newInstance()).addService(reflectionV1alpha());
            }
            servers.add(transport.build());
        }
        apiServers = servers.size();
        // Probes only: the same health status, without the API, e.g. plaintext for a kubelet.
        for (ServerBuilder<?> transport : endpoints.healthOnly()) {
            servers.add(transport.addService(health.getHealthService()).build());
        }
        // The health service starts out SERVING for "": a load balancer must not send traffic yet.
        health.setStatus("", ServingStatus.NOT_SERVING);
        health.setStatus(OptimizerGrpc.SERVICE_NAME, ServingStatus.NOT_SERVING);
    }

    /**
     * The doorbell beside the segments, when there are segments; a server that cannot bind one (a
     * directory path too long for a socket address) serves shared memory with commits on gRPC.
     */
    private static Doorbell openDoorbell(SharedMemory shm) {
        if (!shm.enabled()) {
            return null;
        }
        try {
            return Doorbell.open(shm.dir(), Statuses::toDoorbellError);
        } catch (IOException | RuntimeException e) {
            LOG.warning(() -> "no doorbell socket in " + shm.dir() + " (" + e + "): shared-memory steps commit over gRPC");
            return null;
        }
    }

    /**
     * The segment socket beside the segments, when there are segments and the platform lets the
     * server map sealed ones; else clients' segments are files only.
     */
    private static SegmentHandoff openSegmentHandoff(SharedMemory shm) {
        if (!shm.enabled()) {
            return null;
        }
        try {
            SegmentHandoff handoff = SegmentHandoff.open(shm.dir());
            shm.takeSealed(handoff);
            return handoff;
        } catch (IOException | RuntimeException | LinkageError e) {
            LOG.warning(() -> "no segment socket in " + shm.dir() + " (" + e.getMessage() + "): segments are files only");
            return null;
        }
    }

    /**
     * What to serve where: the API (with health, and reflection unless turned off) on each of
     * {@code api}, only the health service on each of {@code healthOnly}; the API's calls need a
     * token of {@code tokens} (null: open to every caller).
     */
    public record Endpoints(List<? extends ServerBuilder<?>> api, List<? extends ServerBuilder<?>> healthOnly,
                            boolean reflection, TokenAuthority tokens) {
        public Endpoints(List<? extends ServerBuilder<?>> api, List<? extends ServerBuilder<?>> healthOnly,
                         boolean reflection) {
            this(api, healthOnly, reflection, null);
        }

        public static Endpoints of(List<? extends ServerBuilder<?>> api) {
            return new Endpoints(api, List.of(), true);
        }
    }

    /** Reflection v1alpha beside v1: older grpcurl, Postman and Python's grpcio-reflection only speak v1alpha. */
    @SuppressWarnings("deprecation")
    private static io.grpc.BindableService reflectionV1alpha() {
        return ProtoReflectionService.newInstance();
    }

    /** Starts a server without a state directory. */
    public static SidecarServer start(ServerBuilder<?> transport, Engine engine, long memoryLimit) throws IOException {
        return start(transport, engine, memoryLimit, null, List.of());
    }

    /**
     * Starts a server that keeps its models durable as {@code durability} says (null: in memory
     * only), after restoring what {@code restore} names ("latest", "MODEL" or "MODEL@ID").
     */
    public static SidecarServer start(ServerBuilder<?> transport, Engine engine, long memoryLimit,
                                      Persistence.Options durability, List<String> restore) throws IOException {
        return start(transport, engine, memoryLimit, durability, restore, Limits.DEFAULTS);
    }

    /** As {@link #start(ServerBuilder, Engine, long, Persistence.Options, List)}, bounding what clients may make it hold. */
    public static SidecarServer start(ServerBuilder<?> transport, Engine engine, long memoryLimit,
                                      Persistence.Options durability, List<String> restore, Limits limits)
            throws IOException {
        return start(List.of(transport), engine, memoryLimit, durability, restore, limits);
    }

    /** As {@link #start(ServerBuilder, Engine, long, Persistence.Options, List, Limits)}, on several transports. */
    public static SidecarServer start(List<? extends ServerBuilder<?>> transports, Engine engine, long memoryLimit,
                                      Persistence.Options durability, List<String> restore, Limits limits)
            throws IOException {
        return start(Endpoints.of(transports), engine, memoryLimit, durability, restore, limits, SharedMemory.off());
    }

    /**
     * As {@link #start(List, Engine, long, Persistence.Options, List, Limits)}, with health-only
     * transports too, and clients' shared segments opened in {@code shm}.
     */
    public static SidecarServer start(Endpoints endpoints, Engine engine, long memoryLimit,
                                      Persistence.Options durability, List<String> restore, Limits limits,
                                      SharedMemory shm) throws IOException {
        SidecarServer s = listen(endpoints, engine, memoryLimit, durability, limits, shm);
        s.restoreThenServe(restore);
        return s;
    }

    /**
     * Starts the transport with health NOT_SERVING and Optimizer calls refused (UNAVAILABLE), so
     * probes can watch a long restore; {@link #restoreThenServe} finishes the startup.
     */
    static SidecarServer listen(List<? extends ServerBuilder<?>> transports, Engine engine, long memoryLimit,
                                Persistence.Options durability, Limits limits) throws IOException {
        return listen(Endpoints.of(transports), engine, memoryLimit, durability, limits, SharedMemory.off());
    }

    static SidecarServer listen(Endpoints endpoints, Engine engine, long memoryLimit,
                                Persistence.Options durability, Limits limits, SharedMemory shm) throws IOException {
        SidecarServer s = new SidecarServer(endpoints, engine, memoryLimit, durability, limits, shm);
        try {
            for (Server server : s.servers) {
                server.start();
            }
        } catch (IOException | RuntimeException e) {
            s.servers.forEach(Server::shutdownNow);
            s.releaseResources();
            throw e;
        }
        return s;
    }

    /** Restores what {@code restore} names, then reports SERVING and takes Optimizer calls; on failure stops. */
    void restoreThenServe(List<String> restore) throws IOException {
        try {
            for (String what : restore) {
                if (persistence == null) {
                    throw new IllegalArgumentException("--restore needs --state-dir");
                }
                try {
                    persistence.restoreAtStartup(what);
                } catch (IOException | RuntimeException e) {
                    // Named after the flag, so that the one line an operator sees says which restore failed.
                    throw new IOException("--restore " + what + ": " + e.getMessage(), e);
                }
            }
        } catch (IOException | RuntimeException e) {
            servers.forEach(Server::shutdownNow);
            releaseResources();
            throw e;
        }
        serving = true;
        health.setStatus("", ServingStatus.SERVING);
        health.setStatus(OptimizerGrpc.SERVICE_NAME, ServingStatus.SERVING);
    }

    /** Refuses Optimizer calls until the server serves: clients retry UNAVAILABLE, so they wait out a restore. */
    private final class RefuseUntilServing implements ServerInterceptor {
        @Override
        public <Q, R> ServerCall.Listener<Q> interceptCall(ServerCall<Q, R> call, Metadata headers,
                                                           ServerCallHandler<Q, R> next) {
            if (!serving) {
                call.close(Status.UNAVAILABLE.withDescription("the server is restoring its models; not serving yet"),
                        new Metadata());
                return new ServerCall.Listener<>() {};
            }
            return next.startCall(call, headers);
        }
    }

    /** The TCP port it serves the API on (the first, when there are several), or -1 without one. */
    public int port() {
        return firstPort(servers.subList(0, apiServers));
    }

    /** The TCP port of the first health-only listener, or -1 without one. */
    public int healthPort() {
        return firstPort(servers.subList(apiServers, servers.size()));
    }

    private static int firstPort(List<Server> among) {
        for (Server server : among) {
            if (server.getPort() >= 0) {
                return server.getPort();
            }
        }
        return -1;
    }

    public ModelRegistry registry() {
        return registry;
    }

    public void awaitTermination() throws InterruptedException {
        for (Server server : servers) {
            server.awaitTermination();
        }
    }

    public Persistence persistence() {
        return persistence;
    }

    /**
     * Graceful shutdown: stops taking steps, snapshots every model that changed since its last
     * snapshot, ends open Step streams with UNAVAILABLE (clients retry against the restarted
     * server), then stops, and its threads with it.
     */
    @Override
    public void close() {
        LogEvent.info(LOG, "shutdown", null, () -> "shutting down: " + registry.names().size() + " models loaded"
                + (persistence == null ? "" : ", snapshotting those that changed"), "models", registry.names().size());
        health.enterTerminalState();
        if (persistence != null) {
            persistence.shutdown();
        }
        service.shutdown();
        servers.forEach(Server::shutdown);
        try {
            for (Server server : servers) {
                if (!server.awaitTermination(5, TimeUnit.SECONDS)) {
                    server.shutdownNow();
                    server.awaitTermination(5, TimeUnit.SECONDS);
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            servers.forEach(Server::shutdownNow);
        }
        releaseResources();
    }

    private void releaseResources() {
        if (doorbell != null) {
            doorbell.close();
        }
        if (segmentHandoff != null) {
            segmentHandoff.close();
        }
        if (persistence != null) {
            persistence.close();
        }
        threads.close();
    }
}
