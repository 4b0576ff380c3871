package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.model.Limits;
import dev.optsidecar.server.model.Model;
import io.grpc.ForwardingServerCall;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.Status;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import org.junit.jupiter.api.extension.AfterAllCallback;
import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionContext;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static dev.optsidecar.server.StandardModel.grads;
import static dev.optsidecar.server.StandardModel.initialWeights;
import static dev.optsidecar.server.StandardModel.spec;
import static dev.optsidecar.server.StandardModel.tensors;
import static dev.optsidecar.server.StandardModel.zeros;
import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * A server for tests, with the Java client connected and raw generated stubs on a separate
 * channel for messages the client will not produce. In-process by default: the services without
 * a socket. On a loopback socket ({@link #onSocket}) where the transport is the point: connections
 * dropped under the server, flow control, the transport's message limit.
 *
 * <p>Start one in a test, {@code try (SidecarFixture f = SidecarFixture.inProcess().start())}, or
 * for a whole test class: {@code @RegisterExtension static final SidecarFixture SERVER = SidecarFixture.inProcess();}
 */
public final class SidecarFixture implements AutoCloseable, BeforeAllCallback, AfterAllCallback {
    public static final long DEFAULT_MEMORY_LIMIT = 1L << 30;
    /** How long a test waits for the server to notice something asynchronous (a cancellation). */
    public static final long WAIT_MS = 10_000;
    private static final int DEFAULT_THREADS = 2;
    /** What a client accepts in one message: a chunk with room to spare. */
    public static final int CLIENT_MAX_MESSAGE_BYTES = 4 << 20;

    private final boolean onSocket;
    private final int threads;
    private final long memoryLimit;
    private final Persistence.Options durability;
    private final List<String> restore;
    private final String inProcessName = InProcessServerBuilder.generateName();
    private final List<ManagedChannel> channels = new CopyOnWriteArrayList<>();
    private final List<AutoCloseable> closeInReverse = new ArrayList<>();
    private SidecarServer server;
    private int port = -1;
    private OptSidecarClient client;
    private OptimizerGrpc.OptimizerStub async;
    private OptimizerGrpc.OptimizerBlockingStub blocking;
    private SevereLogs severe;
    private final List<SentError> errorsSent = new CopyOnWriteArrayList<>();

    /** A call the server ended with an error: its status and the trailers that went with it. */
    public record SentError(String method, Status status, Metadata trailers) {}
    private Limits limits = Limits.DEFAULTS;
    private dev.optsidecar.server.shm.SharedMemory sharedMemory = dev.optsidecar.server.shm.SharedMemory.off();

    private SidecarFixture(boolean onSocket, int threads, long memoryLimit, Persistence.Options durability,
                           List<String> restore) {
        this.onSocket = onSocket;
        this.threads = threads;
        this.memoryLimit = memoryLimit;
        this.durability = durability;
        this.restore = restore;
    }

    /** An in-process server with two engine threads and a 1 GiB memory limit; not started yet. */
    public static SidecarFixture inProcess() {
        return inProcess(DEFAULT_THREADS, DEFAULT_MEMORY_LIMIT);
    }

    public static SidecarFixture inProcess(long memoryLimit) {
        return inProcess(DEFAULT_THREADS, memoryLimit);
    }

    public static SidecarFixture inProcess(int threads, long memoryLimit) {
        return new SidecarFixture(false, threads, memoryLimit, null, List.of());
    }

    /** An in-process server keeping its models durable, after restoring what {@code restore} names. */
    public static SidecarFixture inProcess(Persistence.Options durability, List<String> restore) {
        return new SidecarFixture(false, DEFAULT_THREADS, DEFAULT_MEMORY_LIMIT, durability, restore);
    }

    /** An in-process server keeping its models durable, under a memory limit of its own. */
    public static SidecarFixture inProcess(long memoryLimit, Persistence.Options durability) {
        return new SidecarFixture(false, DEFAULT_THREADS, memoryLimit, durability, List.of());
    }

    /** A server on a loopback port, as Main runs it, with two engine threads and a 1 GiB memory limit. */
    public static SidecarFixture onSocket() {
        return onSocket(DEFAULT_THREADS, DEFAULT_MEMORY_LIMIT);
    }

    public static SidecarFixture onSocket(int threads, long memoryLimit) {
        return new SidecarFixture(true, threads, memoryLimit, null, List.of());
    }

    /** Bounds what clients may make the server hold (before {@link #start}); returns this fixture. */
    public SidecarFixture limits(Limits limits) {
        this.limits = limits;
        return this;
    }

    /** Maps clients' shared segments from {@code dir} (before {@link #start}), as --shm-dir; returns this fixture. */
    public SidecarFixture sharedMemory(java.nio.file.Path dir) throws IOException {
        this.sharedMemory = dev.optsidecar.server.shm.SharedMemory.in(dir);
        return this;
    }

    /** The shared-memory directory the server maps segments from (off unless {@link #sharedMemory(java.nio.file.Path)}). */
    public dev.optsidecar.server.shm.SharedMemory sharedMemory() {
        return sharedMemory;
    }

    /** Computes on engines {@code factory} makes (in-process servers; the fixture closes them) instead of the CPU's. */
    public SidecarFixture engine(java.util.function.Supplier<dev.optsidecar.server.engine.Engine> factory) {
        this.engineFactory = factory;
        return this;
    }

    private java.util.function.Supplier<dev.optsidecar.server.engine.Engine> engineFactory;

    /** Starts the server and connects the clients; returns this fixture. */
    public SidecarFixture start() throws IOException {
        severe = new SevereLogs();
        closeInReverse.add(severe::close);
        if (onSocket) {
            SocketServer s = SocketServer.start(List.of(new ListenAddress.Tcp("127.0.0.1", 0)), threads, memoryLimit,
                    durability, restore, limits, sharedMemory);
            closeInReverse.add(s);
            server = s.server();
            port = s.port();
            client = OptSidecarClient.connect(target());
        } else {
            dev.optsidecar.server.engine.Engine engine = engineFactory != null ? engineFactory.get()
                    : new CpuEngine(threads);
            closeInReverse.add(engine);
            server = SidecarServer.start(SidecarServer.Endpoints.of(List.of(InProcessServerBuilder.forName(inProcessName)
                    .maxInboundMessageSize(SidecarServer.MAX_MESSAGE_BYTES)
                    .intercept(new ErrorRecorder()))), engine, memoryLimit, durability, restore, limits, sharedMemory);
            closeInReverse.add(server);
            client = new OptSidecarClient(channel());
        }
        closeInReverse.add(client);
        ManagedChannel raw = channel();
        async = OptimizerGrpc.newStub(raw);
        blocking = OptimizerGrpc.newBlockingStub(raw).withMaxInboundMessageSize(CLIENT_MAX_MESSAGE_BYTES);
        return this;
    }

    @Override
    public void beforeAll(ExtensionContext context) throws IOException {
        start();
    }

    @Override
    public void afterAll(ExtensionContext context) {
        close();
    }

    public SidecarServer server() {
        return server;
    }

    /** The Java client, on a connection of its own. */
    public OptSidecarClient client() {
        return client;
    }

    /**
     * Every call an in-process server has ended with an error so far, as it went on the wire
     * (status and trailers, where the error details travel).
     */
    public List<SentError> errorsSent() {
        return List.copyOf(errorsSent);
    }

    /** Raw generated stubs, sharing one connection. */
    public OptimizerGrpc.OptimizerStub async() {
        return async;
    }

    public OptimizerGrpc.OptimizerBlockingStub blocking() {
        return blocking;
    }

    /** The loopback port of a server on a socket. */
    public int port() {
        if (!onSocket) {
            throw new IllegalStateException("an in-process server has no port");
        }
        return port;
    }

    public String target() {
        return "127.0.0.1:" + port();
    }

    /** A new, independent connection to the server; shut down by the caller, or else when the fixture closes. */
    public ManagedChannel channel() {
        ManagedChannel c = onSocket ? channelTo(port)
                : InProcessChannelBuilder.forName(inProcessName).maxInboundMessageSize(CLIENT_MAX_MESSAGE_BYTES).build();
        channels.add(c);
        return c;
    }

    /** A channel to a loopback port (the server's, or a relay's in front of it); the caller shuts it down. */
    public static ManagedChannel channelTo(int port) {
        return NettyChannelBuilder.forAddress("127.0.0.1", port)
                .usePlaintext()
                .maxInboundMessageSize(CLIENT_MAX_MESSAGE_BYTES)
                .build();
    }

    /** Another Java client, on a connection of its own. */
    public OptSidecarClient connect() {
        return onSocket ? OptSidecarClient.connect(target()) : new OptSidecarClient(channel());
    }

    public Model model(String name) {
        return server.registry().get(name, "test");
    }

    @Override
    public void close() {
        for (ManagedChannel c : channels) {
            c.shutdownNow();
        }
        try {
            for (ManagedChannel c : channels) {
                c.awaitTermination(5, TimeUnit.SECONDS);
            }
            for (int i = closeInReverse.size() - 1; i >= 0; i--) {
                closeInReverse.get(i).close();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (Exception e) {
            throw new IllegalStateException("closing the test server failed", e);
        }
        closeInReverse.clear();
    }

    // ------------------------------------------------------------------------------------------
    // The server stays healthy

    /**
     * The server still serves: a fresh model registers, steps and pulls, and nothing was logged
     * as SEVERE (an unexpected exception inside the server) while the tests ran.
     */
    public void assertServerHealthy(String name) {
        float[][] init = initialWeights(99);
        client.register(spec(name, "Adam", struct("lr", 0.01), NonFinitePolicy.NON_FINITE_POLICY_UNSPECIFIED),
                tensors(init));
        float[][] out = zeros();
        try (Trainer t = client.trainer(name, "health")) {
            StepResult r = t.step(grads(1), out);
            assertEquals(1, r.getVersion());
            assertFalse(r.getSkipped());
        }
        float[][] pulled = pull(name);
        assertBitsEqual(out, pulled, "weights returned by the step vs. pulled");
        assertEquals(1, client.describe(name).getVersion());
        client.delete(name);
        severe.assertNone();
    }

    public void assertNotFound(String model) {
        assertStatus(Status.Code.NOT_FOUND, () -> client.describe(model), model);
        assertFalse(client.list().contains(model), () -> model + " is listed");
    }

    // ------------------------------------------------------------------------------------------
    // Reading and stepping a model

    public float[][] pull(String model) {
        float[][] out = zeros();
        client.pull(model, tensors(out));
        return out;
    }

    public ModelInfo describe(String model) {
        return blocking.describe(DescribeRequest.newBuilder().setModel(model).build());
    }

    /** One valid step with {@code grads} on a fresh stream; returns the weights it sent back. */
    public StepResult step(String model, float[][] grads, float[][] weightsOut) {
        try (Trainer t = client.trainer(model, "test")) {
            return t.step(grads, weightsOut);
        }
    }

    /** Polls {@code condition} until it holds, for at most {@link #WAIT_MS}. */
    public static void awaitTrue(String what, BooleanSupplier condition) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MS);
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                fail("timed out after " + WAIT_MS + " ms waiting for " + what);
            }
            try {
                Thread.sleep(2);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new AssertionError("interrupted waiting for " + what, e);
            }
        }
    }

    // ------------------------------------------------------------------------------------------

    /** Records the error statuses the server's calls end with, for {@link #errorsSent()}. */
    private final class ErrorRecorder implements ServerInterceptor {
        @Override
        public <Q, R> ServerCall.Listener<Q> interceptCall(ServerCall<Q, R> call, Metadata headers,
                                                           ServerCallHandler<Q, R> next) {
            return next.startCall(new ForwardingServerCall.SimpleForwardingServerCall<>(call) {
                @Override
                public void close(Status status, Metadata trailers) {
                    if (!status.isOk()) {
                        errorsSent.add(new SentError(call.getMethodDescriptor().getFullMethodName(), status, trailers));
                    }
                    super.close(status, trailers);
                }
            }, headers);
        }
    }

    /** Records SEVERE log records from the server and gRPC: an unexpected exception somewhere. */
    private static final class SevereLogs extends Handler {
        private final List<Logger> loggers = List.of(Logger.getLogger("dev.optsidecar"), Logger.getLogger("io.grpc"));
        private final List<String> records = new ArrayList<>();

        SevereLogs() {
            loggers.forEach(l -> l.addHandler(this));
        }

        @Override
        public synchronized void publish(LogRecord r) {
            if (r.getLevel().intValue() >= Level.SEVERE.intValue()) {
                records.add(r.getLoggerName() + ": " + r.getMessage()
                        + (r.getThrown() == null ? "" : " (" + r.getThrown() + ")"));
            }
        }

        synchronized void assertNone() {
            assertTrue(records.isEmpty(), () -> "the server logged unexpected errors: " + records);
        }

        @Override
        public void flush() {}

        @Override
        public void close() {
            loggers.forEach(l -> l.removeHandler(this));
        }
    }
}
