from axflow.stages import main

main()
