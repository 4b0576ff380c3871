package dev.optsidecar.server;

import dev.optsidecar.server.bench.BenchCommand;
import dev.optsidecar.server.conformance.ConformanceCommand;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

import java.io.IOException;
import java.util.concurrent.Callable;

/** {@code java -jar optsidecar-server.jar [serve flags] | conformance DIR | bench}. */
@Command(name = "optsidecar-server", mixinStandardHelpOptions = true, version = "optsidecar 0.1.0",
        description = "Optimizer-as-a-service: holds model parameters and optimizer state, applies steps to"
                + " gradients streamed by trainers over gRPC. With no subcommand it serves.",
        footer = {"", "Every flag can also be set in the environment as OPTSIDECAR_<FLAG>, e.g. OPTSIDECAR_PORT=50051,"
                + " OPTSIDECAR_TLS_CERT=/etc/tls/tls.crt, OPTSIDECAR_REFLECTION=false; a repeatable flag takes a"
                + " comma-separated list (OPTSIDECAR_RESTORE=latest). The command line wins over the environment."},
        subcommands = {ConformanceCommand.class, BenchCommand.class})
public final class Main implements Callable<Integer> {
    /** Exit code of a mistake on the command line (picocli's usage error code). */
    static final int EXIT_USAGE = CommandLine.ExitCode.USAGE;
    /** Exit code when the flags are fine but the server cannot start: port taken, state dir unusable, a failed restore. */
    static final int EXIT_CANNOT_START = CommandLine.ExitCode.SOFTWARE;
    /** The flags that only mean something with --state-dir. */
    private static final java.util.List<String> STATE_DIR_FLAGS =
            java.util.List.of("--journal", "--snapshot-every-steps", "--snapshot-interval", "--snapshot-keep");

    @Spec
    CommandSpec spec;

    @Option(names = "--port", defaultValue = "50051", description = "TCP port to listen on (default: ${DEFAULT-VALUE}).")
    int port;

    @Option(names = "--bind", defaultValue = "127.0.0.1",
            description = "Address to bind (default: ${DEFAULT-VALUE}; 0.0.0.0 for all interfaces).")
    String bind;

    @Option(names = "--listen", paramLabel = "ADDRESS", split = ",",
            description = "Listen on ADDRESS: HOST:PORT, or unix:PATH (unix:///run/optsidecar.sock) for a Unix"
                    + " domain socket, for clients on the same host or pod without TCP. Repeatable. Served beside"
                    + " --bind:--port when either is given; without them, only the --listen addresses.")
    java.util.List<String> listen = new java.util.ArrayList<>();

    @Option(names = "--threads", description = "Engine compute threads (default: the number of CPUs, ${sys:optsidecar.cpus}).")
    Integer threads;

    @Option(names = "--engine", defaultValue = "auto", paramLabel = "auto|cpu|cuda",
            description = "Where tensors live and steps run: cuda (a GPU; the server does not start without a usable"
                    + " one), cpu, or auto: cuda when a device is usable and its self-test passes, else cpu, with"
                    + " the reason logged (default: ${DEFAULT-VALUE}).")
    String engine;

    @Option(names = "--device", defaultValue = "0", paramLabel = "N",
            description = "The CUDA device of the cuda engine (default: ${DEFAULT-VALUE}).")
    int device;

    @Option(names = "--memory-limit", converter = ByteSize.class,
            description = "Most bytes all models together may hold, e.g. 8g or 512m (default: the JVM heap less 512m;"
                    + " on the cuda engine, 90% of the device memory free at start).")
    Long memoryLimit;

    @Option(names = "--state-dir", paramLabel = "DIR",
            description = "Keep models durable here: snapshots, the step journal and exports. Without it the"
                    + " server keeps everything in memory only.")
    java.nio.file.Path stateDir;

    @Option(names = "--journal", defaultValue = "fsync", paramLabel = "MODE",
            description = "With --state-dir, record each step before acknowledging it: fsync (survives power loss),"
                    + " write (survives the process dying) or off (steps since the last snapshot can be lost)"
                    + " (default: ${DEFAULT-VALUE}).")
    String journal;

    @Option(names = "--snapshot-every-steps", defaultValue = "0", paramLabel = "N",
            description = "Snapshot a model after every N steps (default: 0, never; with a journal a model is"
                    + " also snapshotted once its journal outgrows its last snapshot).")
    long snapshotEverySteps;

    @Option(names = "--snapshot-interval", defaultValue = "0", paramLabel = "SECONDS",
            description = "Snapshot models that changed, this often (default: 0, never).")
    long snapshotInterval;

    @Option(names = "--snapshot-keep", defaultValue = "3", paramLabel = "K",
            description = "Snapshots kept per model; older ones and their journals are deleted (default: ${DEFAULT-VALUE}).")
    int snapshotKeep;

    @Option(names = "--restore", paramLabel = "latest|MODEL|MODEL@ID", split = ",",
            description = "At startup, restore every model's latest snapshot (latest), one model's, or one snapshot"
                    + " exactly; latest and MODEL also replay the journaled steps after it. Repeatable.")
    java.util.List<String> restore = new java.util.ArrayList<>();

    @Option(names = "--max-client-id-bytes", defaultValue = "256", paramLabel = "N",
            description = "Longest client id a trainer may name itself by, in UTF-8 bytes (default: ${DEFAULT-VALUE}).")
    int maxClientIdBytes;

    @Option(names = "--max-tensors-per-model", defaultValue = "100000", paramLabel = "N",
            description = "Most tensors one model may have (default: ${DEFAULT-VALUE}).")
    int maxTensorsPerModel;

    @Option(names = "--max-trainers-per-model", defaultValue = "1024", paramLabel = "N",
            description = "Most trainers attached to one model at once (default: ${DEFAULT-VALUE}).")
    int maxTrainersPerModel;

    @Option(names = "--max-pending-registrations", defaultValue = "64", paramLabel = "N",
            description = "Most models being registered, restored or forked at once (default: ${DEFAULT-VALUE}).")
    int maxPendingRegistrations;

    @Option(names = "--max-ledger-entries", defaultValue = "4096", paramLabel = "N",
            description = "Most clients whose last step a model remembers for exactly-once retries; the longest"
                    + " inactive is forgotten first (default: ${DEFAULT-VALUE}).")
    int maxLedgerEntries;

    @Option(names = "--history-versions", defaultValue = "100000", paramLabel = "N",
            description = "Versions whose contributions a model keeps for the History RPC (default: ${DEFAULT-VALUE}).")
    int historyVersions;

    @Option(names = "--history-bytes", defaultValue = "64m", converter = ByteSize.class, paramLabel = "SIZE",
            description = "Most bytes of History a model keeps, oldest dropped first (default: 64m).")
    long historyBytes;

    @Option(names = "--idle-stream-timeout", defaultValue = "300", paramLabel = "SECONDS",
            description = "Close a Step or Register stream that sends nothing for this long, freeing what it holds"
                    + " (default: ${DEFAULT-VALUE}; 0: never).")
    long idleStreamTimeout;

    @Option(names = "--shm-dir", paramLabel = "DIR",
            description = "Open co-located clients' shared-memory segments in this directory (e.g. /dev/shm);"
                    + " off by default.")
    java.nio.file.Path shmDir;

    @Option(names = "--tls-cert", paramLabel = "FILE",
            description = "Serve TLS on the TCP listeners with this certificate chain (PEM), with --tls-key. Unix"
                    + " sockets stay plaintext. Re-read when the file changes, without a restart.")
    java.nio.file.Path tlsCert;

    @Option(names = "--tls-key", paramLabel = "FILE", description = "The private key of --tls-cert (PEM, PKCS#8).")
    java.nio.file.Path tlsKey;

    @Option(names = "--tls-client-ca", paramLabel = "FILE",
            description = "Mutual TLS: require a client certificate issued by a CA in this PEM file (needs --tls-cert).")
    java.nio.file.Path tlsClientCa;

    @Option(names = "--auth-tokens", paramLabel = "FILE",
            description = "Require a bearer token on every API call: a JSON file of token digests with their role"
                    + " (reader, trainer, admin) and models (globs). Re-read when the file changes. Tokens travel"
                    + " only over TLS, loopback or a Unix socket.")
    java.nio.file.Path authTokens;

    @Option(names = "--health-port", paramLabel = "N",
            description = "Also serve only the gRPC health service, in plaintext, on this port (for kubelet probes"
                    + " while the API is TLS, loopback or a Unix socket; 0: any free port).")
    Integer healthPort;

    @Option(names = "--health-bind", defaultValue = "0.0.0.0", paramLabel = "ADDRESS",
            description = "Address of --health-port (default: ${DEFAULT-VALUE}, all interfaces).")
    String healthBind;

    @Option(names = "--reflection", negatable = true, defaultValue = "true", fallbackValue = "true",
            description = "Serve gRPC server reflection on the API listeners (default: on; --no-reflection to hide"
                    + " the API's schema).")
    boolean reflection;

    @Option(names = "--http-port", paramLabel = "N",
            description = "Also serve HTTP on this port: Prometheus metrics at /metrics, the dashboard at / and its"
                    + " JSON read API under /api/; TLS with the API's certificates when --tls-cert is given"
                    + " (0: any free port; default: off).")
    Integer httpPort;

    @Option(names = "--http-bind", paramLabel = "ADDRESS",
            description = "Address of --http-port (default: the --bind address).")
    String httpBind;

    @Option(names = "--log-format", defaultValue = "text", paramLabel = "FORMAT",
            description = "Log lines as text, or as json: one JSON object per line with time, level, logger,"
                    + " message and the event's fields (model, event...) (default: ${DEFAULT-VALUE}).")
    String logFormat;

    public static void main(String[] args) {
        System.setProperty("optsidecar.cpus", String.valueOf(Runtime.getRuntime().availableProcessors()));
        System.exit(commandLine().execute(args));
    }

    /** The command line with handlers that report a mistake or a failed start as one line on stderr. */
    static CommandLine commandLine() {
        return commandLine(System.getenv());
    }

    /** As {@link #commandLine()}, with flags' defaults taken from {@code environment} (OPTSIDECAR_PORT...). */
    static CommandLine commandLine(java.util.Map<String, String> environment) {
        return new CommandLine(new Main())
                .setDefaultValueProvider(new EnvironmentDefaults(environment))
                .setParameterExceptionHandler(Main::usageError)
                .setExecutionExceptionHandler(Main::cannotStart);
    }

    /** A mistake on the command line: the problem, and a hint to --help instead of the whole help text. */
    private static int usageError(CommandLine.ParameterException e, String[] args) {
        CommandLine cmd = e.getCommandLine();
        java.io.PrintWriter err = cmd.getErr();
        err.println(cmd.getCommandSpec().qualifiedName() + ": " + e.getMessage());
        err.println("Try '" + cmd.getCommandSpec().qualifiedName() + " --help' for the flags.");
        err.flush();
        return EXIT_USAGE;
    }

    /** The server (or a command) failed: one line naming the cause, no stack trace. */
    private static int cannotStart(Exception e, CommandLine cmd, CommandLine.ParseResult parsed) {
        java.io.PrintWriter err = cmd.getErr();
        String what = cmd.getCommand() instanceof Main ? "cannot start: " : "";
        err.println(cmd.getCommandSpec().qualifiedName() + ": " + what + describe(e));
        err.flush();
        return EXIT_CANNOT_START;
    }

    /** The exception's message and, when it differs, its root cause's (a failed bind says why only there). */
    static String describe(Throwable e) {
        String top = message(e);
        Throwable root = e;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        String cause = message(root);
        return root == e || top.contains(cause) ? top : top + ": " + cause;
    }

    private static String message(Throwable e) {
        return e.getMessage() == null || e.getMessage().isBlank() ? e.getClass().getSimpleName() : e.getMessage();
    }

    static int defaultThreads() {
        return Runtime.getRuntime().availableProcessors();
    }

    static long defaultMemoryLimit() {
        long heap = Runtime.getRuntime().maxMemory();
        return Math.max(heap / 2, heap - (512L << 20));
    }

    @Override
    public Integer call() throws Exception {
        validate();
        dev.optsidecar.server.observe.LogFormat.install(logFormat);
        ServerTls tls = tls();
        dev.optsidecar.server.auth.TokenAuthority tokens;
        try {
            tokens = tokens(tls);
        } catch (RuntimeException e) {
            if (tls != null) {
                tls.close();
            }
            throw e;
        }
        SocketServer.Exposure exposure = new SocketServer.Exposure(tls,
                healthPort == null ? null : new ListenAddress.Tcp(healthBind, healthPort), reflection, tokens);
        SocketServer server;
        try {
            EngineSelection.Choice choice = EngineSelection.open(engine, device,
                    threads == null ? defaultThreads() : threads);
            dev.optsidecar.server.engine.Engine computing = choice.engine();
            long limit = memoryLimit != null ? memoryLimit
                    : computing instanceof dev.optsidecar.server.engine.cuda.CudaEngine cuda
                    ? cuda.freeBytes() / 10 * 9 : defaultMemoryLimit();
            server = SocketServer.start(listenAddresses(), exposure, computing, limit, durability(), restore,
                    limits(), sharedMemory());
            EngineSelection.log(choice);
        } catch (IOException | RuntimeException e) {
            if (tls != null) {
                tls.close();
            }
            if (tokens != null) {
                tokens.close();
            }
            throw e;
        }
        dev.optsidecar.server.http.HttpApi http;
        try {
            http = http(server, tls, tokens);
        } catch (IOException | RuntimeException e) {
            server.close();
            throw e;
        }
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (http != null) {
                http.close();
            }
            server.close();
        }, "optsidecar-shutdown"));
        server.server().awaitTermination();
        return 0;
    }

    /** The HTTP endpoint on --http-bind:--http-port, or null without --http-port. */
    private dev.optsidecar.server.http.HttpApi http(SocketServer server, ServerTls tls,
                                                    dev.optsidecar.server.auth.TokenAuthority tokens)
            throws IOException {
        if (httpPort == null) {
            return null;
        }
        String host = httpBind == null ? bind : httpBind;
        java.net.InetSocketAddress address = new java.net.InetSocketAddress(host, httpPort);
        dev.optsidecar.server.http.HttpApi http;
        try {
            http = dev.optsidecar.server.http.HttpApi.start(address, tls, server.server().registry(),
                    server.server().persistence(), tokens == null ? dev.optsidecar.server.http.HttpAccess.ALLOW_ALL
                            : new dev.optsidecar.server.http.TokenAccess(tokens));
        } catch (IOException e) {
            throw new IOException("--http-port " + new ListenAddress.Tcp(host, httpPort) + ": " + describe(e), e);
        }
        java.util.logging.Logger.getLogger(Main.class.getName()).info(() -> "HTTP (metrics, dashboard) on "
                + (tls == null ? "http://" : "https://") + new ListenAddress.Tcp(host, http.port()));
        return http;
    }

    /** Checks what picocli's parsing cannot: ranges, flags that need each other, the bind address. */
    private void validate() {
        if (port < 0 || port > 65535) {
            throw usage("--port must be 0 to 65535 (0: any free port), not " + port);
        }
        if (threads != null && threads < 1) {
            throw usage("--threads must be at least 1, not " + threads);
        }
        if (!EngineSelection.MODES.contains(engine)) {
            throw usage("--engine must be auto, cpu or cuda, not " + engine);
        }
        if (device < 0) {
            throw usage("--device must be 0 or more, not " + device);
        }
        if (engine.equals("cpu") && given("--device")) {
            throw usage("--device needs --engine cuda or auto");
        }
        long heap = Runtime.getRuntime().maxMemory();
        // The cuda engine's memory is the device's, not the heap.
        if (!engine.equals("cuda") && memoryLimit != null && heap != Long.MAX_VALUE && memoryLimit > heap) {
            throw usage("--memory-limit " + memoryLimit + " bytes is above the JVM's maximum heap of " + heap
                    + " bytes; start java with a larger -Xmx");
        }
        if (stateDir == null) {
            for (String flag : STATE_DIR_FLAGS) {
                if (given(flag)) {
                    throw usage(flag + " needs --state-dir");
                }
            }
        } else if (java.nio.file.Files.exists(stateDir) && !java.nio.file.Files.isDirectory(stateDir)) {
            throw usage("--state-dir " + stateDir + " is a file, not a directory");
        }
        for (ListenAddress address : listenAddresses()) {
            if (address instanceof ListenAddress.Tcp tcp) {
                checkBindAddress(tcp.host(), listen.isEmpty() ? "--bind " : "--listen ");
            }
        }
        if ((tlsCert == null) != (tlsKey == null)) {
            throw usage(tlsCert == null ? "--tls-key needs --tls-cert" : "--tls-cert needs --tls-key");
        }
        if (tlsClientCa != null && tlsCert == null) {
            throw usage("--tls-client-ca needs --tls-cert and --tls-key");
        }
        if (healthPort != null) {
            if (healthPort < 0 || healthPort > 65535) {
                throw usage("--health-port must be 0 to 65535 (0: any free port), not " + healthPort);
            }
            checkBindAddress(healthBind, "--health-bind ");
        } else if (given("--health-bind")) {
            throw usage("--health-bind needs --health-port");
        }
        if (httpPort != null) {
            if (httpPort < 0 || httpPort > 65535) {
                throw usage("--http-port must be 0 to 65535 (0: any free port), not " + httpPort);
            }
            checkBindAddress(httpBind == null ? bind : httpBind, "--http-bind ");
        } else if (given("--http-bind")) {
            throw usage("--http-bind needs --http-port");
        }
        if (!logFormat.equals("text") && !logFormat.equals("json")) {
            throw usage("--log-format: '" + logFormat + "' is not text or json");
        }
    }

    /** The TLS files loaded and watched, or null without --tls-cert; a bad file is a mistake in the flags. */
    ServerTls tls() {
        if (tlsCert == null) {
            return null;
        }
        try {
            return ServerTls.load(tlsCert, tlsKey, tlsClientCa, ServerTls.DEFAULT_RELOAD);
        } catch (IllegalArgumentException e) {
            throw usage(e.getMessage());
        }
    }

    /**
     * The token file loaded and watched, or null without --auth-tokens. A bad file, or tokens that
     * would cross the network in plaintext (a TCP address other hosts reach, without TLS), are
     * mistakes in the flags.
     */
    dev.optsidecar.server.auth.TokenAuthority tokens(ServerTls tls) {
        if (authTokens == null) {
            return null;
        }
        java.util.List<ListenAddress> served = new java.util.ArrayList<>(listenAddresses());
        if (httpPort != null) {
            served.add(new ListenAddress.Tcp(httpBind == null ? bind : httpBind, httpPort));
        }
        java.util.List<ListenAddress.Tcp> exposed = dev.optsidecar.server.auth.Plaintext.reachableFromOtherHosts(served);
        if (tls == null && !exposed.isEmpty()) {
            throw usage("--auth-tokens on plaintext " + exposed.get(0) + ", which other hosts reach, would send"
                    + " tokens in the clear; serve TLS (--tls-cert, --tls-key) or listen on loopback or a Unix socket");
        }
        try {
            return dev.optsidecar.server.auth.TokenAuthority.load(authTokens,
                    dev.optsidecar.server.auth.TokenAuthority.DEFAULT_RELOAD);
        } catch (IllegalArgumentException e) {
            throw usage(e.getMessage());
        }
    }

    /**
     * Where to listen: --bind:--port (unless only --listen addresses are given, without --bind or
     * --port), then each --listen address.
     */
    java.util.List<ListenAddress> listenAddresses() {
        java.util.List<ListenAddress> out = new java.util.ArrayList<>();
        if (listen.isEmpty() || given("--bind") || given("--port")) {
            out.add(new ListenAddress.Tcp(bind, port));
        }
        for (String text : listen) {
            try {
                out.add(ListenAddress.parse(text));
            } catch (IllegalArgumentException e) {
                throw usage("--listen " + e.getMessage());
            }
        }
        return out;
    }

    /** Whether {@code flag} was set, on the command line or by its OPTSIDECAR_* variable. */
    private boolean given(String flag) {
        if (spec.commandLine().getParseResult().hasMatchedOption(flag)) {
            return true;
        }
        CommandLine.IDefaultValueProvider environment = spec.commandLine().getDefaultValueProvider();
        try {
            return environment != null && environment.defaultValue(spec.findOption(flag)) != null;
        } catch (Exception e) {
            return false;
        }
    }

    /** An address that is not this machine's fails at bind with a vague error; name the flag instead. */
    private void checkBindAddress(String bind, String flag) {
        java.net.InetAddress address;
        try {
            address = java.net.InetAddress.getByName(bind);
        } catch (java.net.UnknownHostException e) {
            throw usage(flag + bind + ": not a known host or IP address");
        }
        boolean local;
        try {
            local = address.isAnyLocalAddress() || address.isLoopbackAddress()
                    || java.net.NetworkInterface.getByInetAddress(address) != null;
        } catch (java.net.SocketException e) {
            local = true; // cannot tell: let the bind itself decide
        }
        if (!local) {
            throw usage(flag + bind + ": not an address of this machine");
        }
    }

    private CommandLine.ParameterException usage(String message) {
        return new CommandLine.ParameterException(spec.commandLine(), message);
    }

    /** The bounds on what clients may make the server hold. */
    dev.optsidecar.server.model.Limits limits() {
        if (maxClientIdBytes < 1 || maxTensorsPerModel < 1 || maxTrainersPerModel < 1 || maxPendingRegistrations < 1
                || maxLedgerEntries < 1 || historyVersions < 1 || idleStreamTimeout < 0) {
            throw usage("--max-* and --history-versions must be >= 1; --idle-stream-timeout >= 0");
        }
        return new dev.optsidecar.server.model.Limits(maxClientIdBytes, maxTensorsPerModel, maxTrainersPerModel,
                maxPendingRegistrations, maxLedgerEntries, historyVersions, historyBytes,
                java.time.Duration.ofSeconds(idleStreamTimeout));
    }

    /** Where clients' segments are opened; off without --shm-dir. */
    dev.optsidecar.server.shm.SharedMemory sharedMemory() {
        if (shmDir == null) {
            return dev.optsidecar.server.shm.SharedMemory.off();
        }
        if (!java.nio.file.Files.isDirectory(shmDir)) {
            throw usage("--shm-dir " + shmDir + " is not a directory");
        }
        try {
            return dev.optsidecar.server.shm.SharedMemory.in(shmDir);
        } catch (java.io.IOException e) {
            throw usage("--shm-dir " + shmDir + ": " + describe(e));
        }
    }

    /** The durability options, or null when the server keeps no state directory. */
    private dev.optsidecar.server.durability.Persistence.Options durability() {
        if (stateDir == null) {
            if (!restore.isEmpty()) {
                throw new CommandLine.ParameterException(new CommandLine(this), "--restore needs --state-dir");
            }
            return null;
        }
        dev.optsidecar.server.durability.StepJournal.Sync sync = switch (journal) {
            case "fsync" -> dev.optsidecar.server.durability.StepJournal.Sync.FSYNC;
            case "write" -> dev.optsidecar.server.durability.StepJournal.Sync.WRITE;
            case "off" -> null;
            default -> throw new CommandLine.ParameterException(new CommandLine(this),
                    "--journal: '" + journal + "' is not fsync, write or off");
        };
        if (snapshotKeep < 1 || snapshotEverySteps < 0 || snapshotInterval < 0) {
            throw new CommandLine.ParameterException(new CommandLine(this),
                    "--snapshot-keep must be >= 1; --snapshot-every-steps and --snapshot-interval >= 0");
        }
        return new dev.optsidecar.server.durability.Persistence.Options(stateDir, snapshotKeep, sync,
                snapshotEverySteps, snapshotInterval == 0 ? null : java.time.Duration.ofSeconds(snapshotInterval), true);
    }

    /**
     * Each flag's default from the environment: --state-dir from OPTSIDECAR_STATE_DIR and so on;
     * none for --help and --version. Picocli splits a repeatable flag's value on its ','.
     */
    static final class EnvironmentDefaults implements CommandLine.IDefaultValueProvider {
        private final java.util.Map<String, String> environment;

        EnvironmentDefaults(java.util.Map<String, String> environment) {
            this.environment = environment;
        }

        /** OPTSIDECAR_ and the flag's long name in capitals, '-' as '_'. */
        static String variable(String flag) {
            return "OPTSIDECAR_" + flag.replaceFirst("^-+", "").replace('-', '_').toUpperCase(java.util.Locale.ROOT);
        }

        @Override
        public String defaultValue(CommandLine.Model.ArgSpec arg) {
            if (!(arg instanceof CommandLine.Model.OptionSpec option) || option.usageHelp() || option.versionHelp()
                    || !(option.command().userObject() instanceof Main)) {
                return null;
            }
            String value = environment.get(variable(option.longestName()));
            return value == null || value.isEmpty() ? null : value;
        }
    }

    /** Parses sizes like 512m, 8g or a plain byte count. */
    static final class ByteSize implements CommandLine.ITypeConverter<Long> {
        @Override
        public Long convert(String value) {
            String v = value.trim().toLowerCase(java.util.Locale.ROOT);
            long unit = 1;
            char last = v.isEmpty() ? ' ' : v.charAt(v.length() - 1);
            switch (last) {
                case 'k' -> unit = 1L << 10;
                case 'm' -> unit = 1L << 20;
                case 'g' -> unit = 1L << 30;
                case 't' -> unit = 1L << 40;
                default -> { }
            }
            String digits = unit == 1 ? v : v.substring(0, v.length() - 1);
            try {
                long n = Long.parseLong(digits);
                if (n <= 0) {
                    throw new CommandLine.TypeConversionException("size must be positive: " + value);
                }
                return Math.multiplyExact(n, unit);
            } catch (NumberFormatException | ArithmeticException e) {
                throw new CommandLine.TypeConversionException("not a size: '" + value + "' (try 512m or 8g)");
            }
        }
    }
}
