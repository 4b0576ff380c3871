package dev.optsidecar.server;

import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.server.api.OptimizerService;
import dev.optsidecar.server.api.UnparsableRequests;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.StepAssembly;
import io.grpc.Server;
import io.grpc.ServerBuilder;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.protobuf.services.HealthStatusManager;
import io.grpc.protobuf.services.ProtoReflectionServiceV1;

import java.io.IOException;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The gRPC server: the Optimizer service, health and reflection, on the transport it is handed
 * (Main: Netty on a socket, see {@link SocketServer}; tests also in-process), applying steps on
 * the engine it is handed. The engine and the transport stay their maker's to close; the server's
 * own background threads ({@link ServerThreads}) stop when it closes.
 */
public final class SidecarServer implements AutoCloseable {
    /** Room for one chunk and its header, with margin; no message needs more. */
    static final int MAX_MESSAGE_BYTES = 4 * StepAssembly.MAX_CHUNK_BYTES;

    private final Server server;
    private final ServerThreads threads = new ServerThreads();
    private final HealthStatusManager health = new HealthStatusManager();
    private final ModelRegistry registry;
    private final Persistence persistence;
    private final OptimizerService service;

    private SidecarServer(ServerBuilder<?> transport, Engine engine, long memoryLimit, Persistence.Options durability)
            throws IOException {
        registry = new ModelRegistry(engine, memoryLimit, threads.timers);
        try {
            persistence = durability == null ? null : new Persistence(registry, durability, threads.snapshots);
        } catch (IOException | RuntimeException e) {
            threads.close();
            throw e;
        }
        service = new OptimizerService(registry, persistence, threads.completions);
        server = transport
                .addService(UnparsableRequests.invalidArgument(service.bindService()))
                .addService(health.getHealthService())
                .addService(ProtoReflectionServiceV1.newInstance())
                .build();
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
        SidecarServer s = new SidecarServer(transport, engine, memoryLimit, durability);
        try {
            for (String what : restore) {
                if (s.persistence == null) {
                    throw new IllegalArgumentException("--restore needs --state-dir");
                }
                s.persistence.restoreAtStartup(what);
            }
            s.server.start();
        } catch (IOException | RuntimeException e) {
            s.releaseResources();
            throw e;
        }
        s.health.setStatus("", ServingStatus.SERVING);
        s.health.setStatus(OptimizerGrpc.SERVICE_NAME, ServingStatus.SERVING);
        return s;
    }

    /** The port it listens on: a socket's, or -1 in-process. */
    public int port() {
        return server.getPort();
    }

    public ModelRegistry registry() {
        return registry;
    }

    public void awaitTermination() throws InterruptedException {
        server.awaitTermination();
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
        health.enterTerminalState();
        if (persistence != null) {
            persistence.shutdown();
        }
        service.shutdown();
        server.shutdown();
        try {
            if (!server.awaitTermination(5, TimeUnit.SECONDS)) {
                server.shutdownNow();
                server.awaitTermination(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            server.shutdownNow();
        }
        releaseResources();
    }

    private void releaseResources() {
        if (persistence != null) {
            persistence.close();
        }
        threads.close();
    }
}
