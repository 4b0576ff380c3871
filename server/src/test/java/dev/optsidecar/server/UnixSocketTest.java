package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.StepResult;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static dev.optsidecar.server.StandardModel.assertBitsEqual;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The server on a Unix domain socket beside TCP: one set of models, whichever transport a client
 * comes through; the socket file is cleaned up, and a stale one left by a dead server is replaced.
 */
class UnixSocketTest {
    @TempDir
    Path dir;

    private static SocketServer start(List<ListenAddress> listen) throws IOException {
        return SocketServer.start(listen, 2, 1L << 30, null, List.of(), dev.optsidecar.server.model.Limits.DEFAULTS);
    }

    @Test
    void aModelTrainedOverTheSocketIsTheModelTcpClientsSee() throws IOException {
        Path socket = dir.resolve("run").resolve("optsidecar.sock");
        try (SocketServer s = start(List.of(new ListenAddress.Tcp("127.0.0.1", 0), new ListenAddress.Unix(socket)));
             OptSidecarClient overSocket = OptSidecarClient.connect("unix://" + socket);
             OptSidecarClient overTcp = OptSidecarClient.connect("127.0.0.1:" + s.port())) {
            assertTrue(Files.exists(socket), "the socket file is created, its folder too");
            assertEquals(List.of(new ListenAddress.Tcp("127.0.0.1", s.port()), new ListenAddress.Unix(socket)),
                    s.listening());
            overSocket.register(StandardModel.adamSpec("uds"), StandardModel.tensors(StandardModel.initialWeights(3)));
            float[][] weights = StandardModel.zeros();
            try (Trainer t = overSocket.trainer("uds", "t")) {
                for (int k = 1; k <= 3; k++) {
                    StepResult r = t.step(StandardModel.grads(k), weights);
                    assertEquals(k, r.getVersion());
                }
            }
            assertEquals(3, overTcp.describe("uds").getVersion());
            float[][] pulled = StandardModel.zeros();
            overTcp.pull("uds", StandardModel.tensors(pulled));
            assertBitsEqual(weights, pulled, "weights stepped over the socket, pulled over TCP");
        }
        assertFalse(Files.exists(socket), "closing the server removes its socket file");
    }

    @Test
    void aStaleSocketFileIsReplacedButALiveOneOrAnotherFileIsNot() throws IOException {
        Path socket = dir.resolve("stale.sock");
        // A server that died without unlinking its socket: the file stays, nobody accepts on it.
        ServerSocketChannel dead = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        dead.bind(UnixDomainSocketAddress.of(socket));
        dead.close();
        assertTrue(Files.exists(socket));
        try (SocketServer s = start(List.of(new ListenAddress.Unix(socket)));
             OptSidecarClient c = OptSidecarClient.connect("unix:" + socket)) {
            assertEquals(List.of(), c.list());
            assertEquals(-1, s.port(), "no TCP port");
            // A second server on the live socket fails to bind, naming the address; the first goes on.
            IOException taken = assertThrows(IOException.class, () -> start(List.of(new ListenAddress.Unix(socket))));
            assertTrue(taken.getMessage().contains(socket.toString()), taken.getMessage());
            assertTrue(taken.getMessage().contains("in use"), taken.getMessage());
            assertEquals(List.of(), c.list());
        }
        Path file = Files.writeString(dir.resolve("not-a-socket"), "data");
        IOException refused = assertThrows(IOException.class, () -> start(List.of(new ListenAddress.Unix(file))));
        assertTrue(refused.getMessage().contains(file + " exists and is not a socket"), refused.getMessage());
        assertEquals("data", Files.readString(file), "a file that is no socket is left alone");
    }

    private static List<ListenAddress> flags(String... args) {
        Main main = new Main();
        new CommandLine(main).parseArgs(args);
        return main.listenAddresses();
    }

    @Test
    void listenFlagsAddSocketsBesideTheTcpPortOrReplaceIt() {
        assertEquals(List.of(new ListenAddress.Tcp("127.0.0.1", 50051)), flags());
        assertEquals(List.of(new ListenAddress.Unix(Path.of("/run/o.sock"))), flags("--listen", "unix:///run/o.sock"));
        assertEquals(List.of(new ListenAddress.Tcp("127.0.0.1", 7000), new ListenAddress.Unix(Path.of("rel.sock"))),
                flags("--port", "7000", "--listen", "unix:rel.sock"));
        assertEquals(List.of(new ListenAddress.Tcp("0.0.0.0", 50052), new ListenAddress.Tcp("::1", 50053)),
                flags("--listen", "0.0.0.0:50052", "--listen", "[::1]:50053"));
        for (String bad : List.of("unix:", "nohost", "host:port", "host:70000", ":5")) {
            CommandLine.ParameterException e = assertThrows(CommandLine.ParameterException.class,
                    () -> flags("--listen", bad), bad);
            assertTrue(e.getMessage().startsWith("--listen"), e.getMessage());
        }
    }
}
