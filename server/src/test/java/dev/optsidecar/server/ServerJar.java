package dev.optsidecar.server;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertTrue;

/** The packaged server jar as a process of its own, started the way the README says. */
final class ServerJar implements AutoCloseable {
    private static final Pattern SERVING = Pattern.compile("serving on 127\\.0\\.0\\.1:(\\d+)");
    private final Process process;
    private final int port;
    private final List<String> log = new CopyOnWriteArrayList<>();

    private ServerJar(Process process, int port, List<String> earlyLog) {
        this.process = process;
        this.port = port;
        this.log.addAll(earlyLog);
    }

    static Path jar() {
        Path jar = Path.of(System.getProperty("optsidecar.server.jar", "target/optsidecar-server.jar"));
        assertTrue(Files.isRegularFile(jar), "missing " + jar);
        return jar;
    }

    static String java() {
        return Path.of(System.getProperty("java.home"), "bin", "java").toString();
    }

    /** A port that was free a moment ago, for a server that must come back on the same port. */
    static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0)) {
            return s.getLocalPort();
        }
    }

    /** Starts the jar with {@code flags} and waits until it reports its port. */
    static ServerJar start(String... flags) throws IOException {
        List<String> command = new ArrayList<>(List.of(java(), "-jar", jar().toString()));
        command.addAll(List.of(flags));
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        BufferedReader out = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
        List<String> early = new ArrayList<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        String line;
        while (System.nanoTime() < deadline && (line = out.readLine()) != null) {
            early.add(line);
            Matcher m = SERVING.matcher(line);
            if (m.find()) {
                ServerJar s = new ServerJar(p, Integer.parseInt(m.group(1)), early);
                Thread drain = new Thread(() -> out.lines().forEach(s.log::add), "server-log");
                drain.setDaemon(true);
                drain.start();
                return s;
            }
        }
        p.destroyForcibly();
        throw new IllegalStateException("server did not report its port; it printed:\n" + String.join("\n", early));
    }

    /** Starts the jar, retrying briefly if the port is still held by a server that just died. */
    static ServerJar startRetrying(String... flags) throws IOException, InterruptedException {
        for (int attempt = 0; ; attempt++) {
            try {
                return start(flags);
            } catch (IllegalStateException e) {
                if (attempt == 20) {
                    throw e;
                }
                Thread.sleep(100);
            }
        }
    }

    int port() {
        return port;
    }

    String target() {
        return "127.0.0.1:" + port;
    }

    List<String> log() {
        return log;
    }

    Process process() {
        return process;
    }

    /** SIGKILL: the process dies at once, with no shutdown hook. */
    void kill() throws InterruptedException {
        process.destroyForcibly();
        process.waitFor(20, TimeUnit.SECONDS);
    }

    /** SIGTERM: a graceful shutdown; returns the exit code. */
    int terminate() throws InterruptedException {
        if (!stopsOnSigterm(30)) {
            process.destroyForcibly();
        }
        return process.waitFor();
    }

    /** Sends SIGTERM; true when the process stopped within {@code seconds}. */
    boolean stopsOnSigterm(long seconds) throws InterruptedException {
        process.destroy();
        return process.waitFor(seconds, TimeUnit.SECONDS);
    }

    @Override
    public void close() throws InterruptedException {
        if (process.isAlive()) {
            kill();
        }
    }
}
