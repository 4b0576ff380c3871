package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import org.junit.jupiter.api.extension.AfterAllCallback;
import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionContext;

/**
 * A real server on a loopback ephemeral port, with a connected client, for one test class:
 * {@code @RegisterExtension static final LiveServer LIVE = new LiveServer(2, 1L << 30);}
 */
public final class LiveServer implements BeforeAllCallback, AfterAllCallback {
    private final int threads;
    private final long memoryLimit;
    private SidecarServer server;
    private OptSidecarClient client;

    public LiveServer(int threads, long memoryLimit) {
        this.threads = threads;
        this.memoryLimit = memoryLimit;
    }

    @Override
    public void beforeAll(ExtensionContext context) throws Exception {
        server = SidecarServer.start("127.0.0.1", 0, threads, memoryLimit);
        client = OptSidecarClient.connect("127.0.0.1:" + server.port());
    }

    @Override
    public void afterAll(ExtensionContext context) {
        client.close();
        server.close();
    }

    public SidecarServer server() {
        return server;
    }

    public OptSidecarClient client() {
        return client;
    }
}
